"""Workers register themselves, heartbeat, and say what they are doing; the UI lists them."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import metrics
from app.extensions import db
from app.models import Worker

STOPPED_ROWS_KEPT_SECONDS = 24 * 3600


def register(worker_id: str, host: str, pid: int) -> None:
    stmt = pg_insert(Worker).values(id=worker_id, host=host, pid=pid, started_at=func.now(),
                                    last_seen_at=func.now(), state="idle")
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"last_seen_at": func.now(), "state": "idle"})
    with metrics.timed_db_write("worker_heartbeat"):
        db.session.execute(stmt)
        db.session.commit()


def heartbeat(worker_id: str, state: str, current_run_id: uuid.UUID | None, runs_done: int) -> None:
    """Say this worker is alive, and what it is doing."""
    with metrics.timed_db_write("worker_heartbeat"):
        db.session.execute(update(Worker).where(Worker.id == worker_id).values(
            last_seen_at=func.now(), state=state, current_run_id=current_run_id, runs_done=runs_done))
        db.session.commit()


def prune_stopped() -> None:
    """Forget workers that stopped (or vanished) more than a day ago."""
    db.session.execute(delete(Worker).where(
        Worker.last_seen_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, STOPPED_ROWS_KEPT_SECONDS)))
    db.session.commit()


def list_workers(limit: int = 200) -> list[Worker]:
    return list(db.session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit)))


def workers_with_liveness(alive_within_seconds: float) -> tuple[datetime, list[tuple[Worker, bool]]]:
    """(the database's now, each worker with whether it heartbeated within the given time)."""
    now = db.session.scalar(select(func.now()))
    return now, [(w, w.state != "stopped" and (now - w.last_seen_at).total_seconds() <= alive_within_seconds)
                 for w in list_workers()]


def seconds_since_any_worker() -> float | None:
    """Seconds since any running worker last heartbeated; None when none is registered."""
    quiet = db.session.scalar(select(func.extract("epoch", func.now() - func.max(Worker.last_seen_at)))
                              .where(Worker.state != "stopped"))
    return None if quiet is None else float(quiet)
