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
from app.models import WORKER_DEVICE_COUNT, GenerationRequest, TunixRun, Worker
from app.runs import counts
from app.run_states import LEASED_STATUSES, PENDING

STOPPED_ROWS_KEPT_SECONDS = 24 * 3600

# What a registered worker is doing.
IDLE = "idle"
RUNNING = "running"
STOPPING = "stopping"  # asked to stop; finishing or handing back its run
STOPPED = "stopped"
WORKER_STATES = (IDLE, RUNNING, STOPPING, STOPPED)


def register(worker_id: str, host: str, pid: int, devices: list[dict] | None = None,
             versions: dict | None = None, playground: str = "share") -> None:
    """Add this worker to the registry (or bring its row back), idle, with the devices it places runs on, the
    versions its trainer runs and whether it answers the playground."""
    stmt = pg_insert(Worker).values(id=worker_id, host=host, pid=pid, started_at=func.now(),
                                    last_seen_at=func.now(), state=IDLE, devices=devices, versions=versions,
                                    playground=playground)
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_={"last_seen_at": func.now(), "state": IDLE,
                                                                    "devices": devices, "versions": versions,
                                                                    "playground": playground})
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
    # populate_existing: rows a long-lived session loaded before come back as they are now, not as cached.
    return list(db.session.scalars(select(Worker).order_by(Worker.last_seen_at.desc()).limit(limit)
                                   .execution_options(populate_existing=True)))


def workers_with_liveness(alive_within_seconds: float) -> tuple[datetime, list[tuple[Worker, bool]]]:
    """(the database's now, each worker with whether it heartbeated within the given time)."""
    now = db.session.scalar(select(func.clock_timestamp()))  # now(), in a long transaction, would be its start
    return now, [(w, w.state != STOPPED and (now - w.last_seen_at).total_seconds() <= alive_within_seconds)
                 for w in list_workers()]


@dataclass
class WorkerView:
    """A registered worker as the pages and the API show it: its row, whether it is alive, what it runs where."""

    row: Worker
    alive: bool
    running: dict[str, list[int]]  # run id -> the device ids it holds on this worker

    @property
    def busy_device_ids(self) -> list[int]:
        return sorted({i for ids in self.running.values() for i in ids})

    @property
    def free_device_ids(self) -> list[int]:
        """Its devices no run holds (none for a worker that is not alive: it places nothing)."""
        busy = set(self.busy_device_ids)
        ids = [d.get("id") for d in (self.row.devices or []) if isinstance(d, dict)]
        return [i for i in ids if isinstance(i, int) and i not in busy] if self.alive else []


def fleet(alive_within_seconds: float) -> tuple[datetime, list[WorkerView]]:
    """(the database's now, every registered worker with its liveness and the runs it holds, on which devices)."""
    now, workers = workers_with_liveness(alive_within_seconds)
    running: dict[str, dict[str, list[int]]] = {}
    if workers:
        rows = db.session.execute(select(TunixRun.worker_id, TunixRun.id, TunixRun.device_ids).where(
            TunixRun.status.in_(LEASED_STATUSES), TunixRun.worker_id.in_([w.id for w, _ in workers]))).all()
        for worker_id, run_id, ids in rows:
            running.setdefault(worker_id, {})[str(run_id)] = list(ids or [])
    return now, [WorkerView(w, alive, running.get(w.id, {})) for w, alive in workers]


def device_states(alive_within_seconds: float) -> dict[tuple[str, str], int]:
    """(device kind, "free" | "busy") -> how many, over the live workers: /metrics' devices gauge."""
    counts_by: dict[tuple[str, str], int] = {}
    for view in fleet(alive_within_seconds)[1]:
        if not view.alive:
            continue
        busy = set(view.busy_device_ids)
        for device in view.row.devices or []:
            if isinstance(device, dict):
                key = (str(device.get("kind") or "unknown"), "busy" if device.get("id") in busy else "free")
                counts_by[key] = counts_by.get(key, 0) + 1
    return counts_by


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


def _read_heartbeats() -> tuple[float, float, tuple[tuple[float, int], ...]]:
    """When this was read (monotonic), the database's clock then, and each running worker's last heartbeat
    (epoch seconds, on the database's clock) with how many devices it has."""
    # Two aggregates over the same rows, fed in the same order: each heartbeat beside its worker's size.
    now, seen, sizes = db.session.execute(
        select(func.extract("epoch", func.now()), func.array_agg(func.extract("epoch", Worker.last_seen_at)),
               func.array_agg(WORKER_DEVICE_COUNT))
        .where(Worker.state != STOPPED)).one()
    return time.monotonic(), float(now), tuple((float(s), int(n)) for s, n in zip(seen or (), sizes or ()))


def _heard_within(alive_within_seconds: float) -> tuple[float, tuple[tuple[float, int], ...]]:
    read_at, then, seen = _heartbeats.get(WHOLE, _read_heartbeats)
    return then + (time.monotonic() - read_at), seen


def worker_presence(alive_within_seconds: float) -> tuple[float | None, int]:
    """Seconds since any running worker last heartbeated (None when none is registered), and how many
    heartbeated within the given time; from the heartbeats this process last read, aged by the time since."""
    now, seen = _heard_within(alive_within_seconds)
    if not seen:
        return None, 0
    return max(0.0, now - max(s for s, _ in seen)), sum(1 for s, _ in seen if s >= now - alive_within_seconds)


def largest_live_worker(alive_within_seconds: float) -> int | None:
    """The most devices a live worker has (None when no worker is live), from the same heartbeats."""
    now, seen = _heard_within(alive_within_seconds)
    return max((size for s, size in seen if s >= now - alive_within_seconds), default=None)


@dataclass
class QueueStats:
    """What /metrics reports about the queue, read from the database in one go."""

    runs: dict[tuple[str, str], int]  # (status, mode) -> count
    oldest_pending_age_seconds: float
    workers_alive: int
    runs_recovered: int
    devices: dict[tuple[str, str], int]  # (kind, free | busy) -> count, over the live workers
    playground: dict[str, int]  # pending, running -> playground requests
    playground_oldest_waiting_seconds: float


def queue_stats(alive_within_seconds: float) -> QueueStats:
    """Run counts, the oldest pending run's age, live workers and recoveries: each an O(1) or indexed read
    (the counts are kept by a trigger; the oldest pending run is the head of the pending index)."""
    runs, recoveries = counts.read()
    oldest = db.session.scalar(select(func.extract("epoch", func.now() - func.min(TunixRun.queued_at)))
                               .where(TunixRun.status == PENDING))
    alive = count_alive(alive_within_seconds)
    devices = device_states(alive_within_seconds)
    # Both partial indexes (waiting, being answered) hold only live requests: small whatever the history.
    playground = dict(db.session.execute(select(GenerationRequest.status, func.count())
                                         .where(GenerationRequest.status.in_(("pending", "running")))
                                         .group_by(GenerationRequest.status)).all())
    waiting = db.session.scalar(select(func.extract("epoch", func.now() - func.min(GenerationRequest.created_at)))
                                .where(GenerationRequest.status == "pending"))
    db.session.rollback()  # end the read transaction; the scrape holds no locks
    return QueueStats(runs=runs, oldest_pending_age_seconds=float(oldest or 0.0),
                      workers_alive=alive, runs_recovered=recoveries, devices=devices,
                      playground={s: int(playground.get(s, 0)) for s in ("pending", "running")},
                      playground_oldest_waiting_seconds=float(waiting or 0.0))
