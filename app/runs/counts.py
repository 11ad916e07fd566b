"""Run counts by status and mode, and recoveries, read in O(1) at any table size.

The `tunix_runs_counted_*` statement triggers (migration 0007) keep `run_counters` in the same transaction
as every insert, status change and delete; `reconcile` recounts exactly now and then, in case
anything ever bypassed it (a TRUNCATE does).
"""
from __future__ import annotations

import zlib

from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from app.extensions import db
from app.models import RunCounter, TunixRun

RECONCILED_AT = "reconciled_at"  # a counter holding when the last exact recount ran (epoch seconds)
_LOCK_KEY = zlib.crc32(b"tunix-rt reconcile run counts")


def read() -> tuple[dict[tuple[str, str], int], int]:
    """((status, mode) -> runs, recoveries): a sum over a few dozen small rows."""
    runs: dict[tuple[str, str], int] = {}
    recoveries = 0
    for name, total in db.session.execute(select(RunCounter.name, func.sum(RunCounter.n))
                                          .group_by(RunCounter.name)).all():
        if name.startswith("runs:"):
            _, status, mode = name.split(":", 2)
            runs[(status, mode)] = int(total)
        elif name == "recoveries":
            recoveries = int(total)
    return runs, recoveries


def reconcile(every_seconds: float) -> bool:
    """Recount exactly when the last recount is older than `every_seconds`; True when this call did.

    One process at a time (an advisory lock); the table is locked against writes (not reads) for
    the count, so no change slips between the count and its replacement.
    """
    if not db.session.scalar(text(f"SELECT pg_try_advisory_xact_lock({_LOCK_KEY})")):
        db.session.rollback()
        return False
    last = db.session.scalar(select(func.max(RunCounter.n)).where(RunCounter.name == RECONCILED_AT))
    now = db.session.scalar(select(func.extract("epoch", func.now())))
    if last is not None and float(now) - float(last) < every_seconds:
        db.session.rollback()
        return False
    # Waiting behind a long writer would queue every other writer behind this lock: give up instead,
    # and try again at the next housekeeping.
    db.session.execute(text("SET LOCAL lock_timeout = '2s'"))
    try:
        db.session.execute(text("LOCK TABLE tunix_runs IN SHARE MODE"))
    except OperationalError:
        db.session.rollback()
        return False
    exact = db.session.execute(select(TunixRun.status, TunixRun.mode, func.count(),
                                      func.coalesce(func.sum(TunixRun.recoveries), 0))
                               .group_by(TunixRun.status, TunixRun.mode)).all()
    db.session.execute(RunCounter.__table__.delete())
    rows = [{"name": f"runs:{status}:{mode}", "shard": 0, "n": n} for status, mode, n, _ in exact]
    rows.append({"name": "recoveries", "shard": 0, "n": int(sum(r[3] for r in exact))})
    rows.append({"name": RECONCILED_AT, "shard": 0, "n": int(float(now))})
    db.session.execute(RunCounter.__table__.insert(), rows)
    db.session.commit()
    return True
