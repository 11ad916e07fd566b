"""The registry of workers (they register, heartbeat and say what they do; the UI lists them), and the
queue statistics /metrics reports."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import instruments
from app.change_feed import WHOLE, WORKERS, FeedCache
from app.extensions import db
from app.models import TunixRun, Worker
from app.runs import counts
from app.run_states import PENDING

STOPPED_ROWS_KEPT_SECONDS = 24 * 3600

# What a registered worker is doing.
IDLE = "idle"
RUNNING = "running"
STOPPING = "stopping"  # asked to stop; finishing or handing back its run
STOPPED = "stopped"
WORKER_STATES = (IDLE, RUNNING, STOPPING, STOPPED)


def register(worker_id: str, host: str, pid: int, devices: list[dict] | None = None) -> None:
    """Add this worker to the registry (or bring its row back), idle, with the devices it trains on."""
    stmt = pg_insert(Worker).values(id=worker_id, host=host, pid=pid, started_at=func.now(),
                                    last_seen_at=func.now(), state=IDLE, devices=devices)
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"last_seen_at": func.now(), "state": IDLE,
                                                                    "devices": devices})
    with instruments.timed_db_write("worker_heartbeat"):
        db.session.execute(stmt)
        db.session.commit()


def heartbeat(worker_id: str, state: str, current_run_id: uuid.UUID | None, runs_done: int) -> None:
    """Say this worker is alive, and what it is doing."""
    with instruments.timed_db_write("worker_heartbeat"):
        db.session.execute(update(Worker).where(Worker.id == worker_id).values(
            last_seen_at=func.now(), state=state, current_run_id=current_run_id, runs_done=runs_done))
        db.session.commit()


def prune_stopped() -> None:
    """Forget workers that stopped (or vanished) more than a day ago."""
    db.session.execute(delete(Worker).where(
        Worker.last_seen_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, STOPPED_ROWS_KEPT_SECONDS)))
    db.session.commit()


def list_workers(limit: int = 200) -> list[Worker]:
    """Registered workers, the most recently seen first."""
    return list(db.session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit)))


def workers_with_liveness(alive_within_seconds: float) -> tuple[datetime, list[tuple[Worker, bool]]]:
    """(the database's now, each worker with whether it heartbeated within the given time)."""
    now = db.session.scalar(select(func.now()))
    return now, [(w, w.state != STOPPED and (now - w.last_seen_at).total_seconds() <= alive_within_seconds)
                 for w in list_workers()]


def live_devices(alive_within_seconds: float) -> list[dict]:
    """Every device the live workers reported, each with its worker's host."""
    rows = db.session.execute(select(Worker.host, Worker.devices).where(
        Worker.state != STOPPED, _seen_within(alive_within_seconds))).all()
    return [{**device, "host": host} for host, devices in rows for device in (devices or [])
            if isinstance(device, dict)]


def _seen_within(seconds: float):
    return Worker.last_seen_at >= func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def count_alive(alive_within_seconds: float) -> int:
    """Workers that heartbeated within the given time and have not stopped."""
    return int(db.session.scalar(select(func.count()).select_from(Worker).where(
        Worker.state != STOPPED, _seen_within(alive_within_seconds))) or 0)


# The workers' heartbeats, kept per process until a worker writes its row (a trigger notifies).
_heartbeats = FeedCache(WORKERS, size=1)


def _read_heartbeats() -> tuple[float, float, tuple[float, ...]]:
    """When this was read (monotonic), the database's clock then, and each running worker's last heartbeat
    (epoch seconds, on the database's clock)."""
    now, seen = db.session.execute(
        select(func.extract("epoch", func.now()), func.array_agg(func.extract("epoch", Worker.last_seen_at)))
        .where(Worker.state != STOPPED)).one()
    return time.monotonic(), float(now), tuple(float(s) for s in seen or ())


def worker_presence(alive_within_seconds: float) -> tuple[float | None, int]:
    """Seconds since any running worker last heartbeated (None when none is registered), and how many
    heartbeated within the given time; from the heartbeats this process last read, aged by the time since."""
    read_at, then, seen = _heartbeats.get(WHOLE, _read_heartbeats)
    now = then + (time.monotonic() - read_at)
    if not seen:
        return None, 0
    return max(0.0, now - max(seen)), sum(1 for s in seen if s >= now - alive_within_seconds)


@dataclass
class QueueStats:
    """What /metrics reports about the queue, read from the database in one go."""

    runs: dict[tuple[str, str], int]  # (status, mode) -> count
    oldest_pending_age_seconds: float
    workers_alive: int
    runs_recovered: int


def queue_stats(alive_within_seconds: float) -> QueueStats:
    """Run counts, the oldest pending run's age, live workers and recoveries: each an O(1) or indexed read
    (the counts are kept by a trigger; the oldest pending run is the head of the pending index)."""
    runs, recoveries = counts.read()
    oldest = db.session.scalar(select(func.extract("epoch", func.now() - func.min(TunixRun.queued_at)))
                               .where(TunixRun.status == PENDING))
    alive = count_alive(alive_within_seconds)
    db.session.rollback()  # end the read transaction; the scrape holds no locks
    return QueueStats(runs=runs, oldest_pending_age_seconds=float(oldest or 0.0),
                      workers_alive=alive, runs_recovered=recoveries)
