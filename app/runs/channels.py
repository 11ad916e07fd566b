"""The NOTIFY channels: run moves send on them inside their transaction; workers LISTEN (app.listen)."""
from __future__ import annotations

from sqlalchemy import text

QUEUE_CHANNEL = "tunix_rt_queue"  # payload: a run id that became pending
CANCEL_CHANNEL = "tunix_rt_cancel"  # payload: a run id whose cancel was requested


def notify(session, channel: str, payload: str) -> None:
    """Queue a notification; Postgres delivers it when (and only if) the transaction commits."""
    session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})
