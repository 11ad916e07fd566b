"""A throwaway Postgres database for a benchmark: DATABASE_URL's server, the local server, or the embedded one."""
from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

from sqlalchemy.engine import make_url

from tools.scratch_postgres import execute_autocommit, server_admin_url, url_for_database


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """Yield the URL of a new, migrated database with the sample dataset; drop it afterwards."""
    if os.environ.get("DATABASE_URL"):
        admin, server = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql").render_as_string(
            False), None
    else:
        admin, server = server_admin_url()
    name = f"tunix_bench_{uuid.uuid4().hex[:8]}"
    execute_autocommit(admin, f'CREATE DATABASE "{name}"')
    url = url_for_database(admin, name)
    try:
        from flask_migrate import upgrade

        from app import create_app
        from app.extensions import db
        from app.datasets.sample import ensure_sample_dataset

        app = create_app({"DATABASE_URL": url})
        with app.app_context():
            upgrade()
            ensure_sample_dataset()
            db.engine.dispose()
        yield url
    finally:
        execute_autocommit(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.cleanup()
