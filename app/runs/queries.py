"""Reading runs: one run, pages of runs, metric series, queue position, retries."""
from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ARRAY, Integer, String, any_, cast, func, literal, or_, select, tuple_

from app.change_feed import QUEUE, RUNS, WHOLE, FeedCache
from app.extensions import db
from app.models import RunChart, RunMetric, TunixRun, User
from app.runs import chart_series
from app.run_states import ASYNC, CANCELLING, COMPLETED, PENDING, RUNNING


def get_run(run_id: str) -> TunixRun | None:
    """The run with this id, or None for an unknown or malformed id."""
    try:
        parsed = uuid.UUID(str(run_id))
    except ValueError:
        return None
    return db.session.get(TunixRun, parsed)


def chart_version(run_id: uuid.UUID) -> int | None:
    """The version of the run's chart row (None without one): enough to know a drawn chart is current."""
    return db.session.scalar(select(RunChart.version).where(RunChart.run_id == run_id))


def chart_of(run_id: uuid.UUID) -> tuple[dict[str, list[dict[str, Any]]], int | None]:
    """The chart's series and their version: one bounded row, kept by the recorder as points arrive.
    A run recorded before that row existed is read (and thinned) from its points, with no version."""
    row = db.session.execute(select(RunChart.series, RunChart.version).where(RunChart.run_id == run_id)).first()
    if row is not None:
        return chart_series.for_drawing(row.series), row.version
    return metric_series(run_id, max_points=chart_series.MAX_POINTS), None


def metric_series(run_id: uuid.UUID, max_points: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """A run's stored metric points, train and eval, in step order.

    With `max_points`, each series is thinned in the database to about that many points
    (evenly spaced, first and last kept), so the status fragment, polled every 4 s by
    every open page, never carries a long run's whole history.
    """
    columns = (RunMetric.split, RunMetric.step, RunMetric.loss, RunMetric.learning_rate,
               RunMetric.tokens_per_second)
    if max_points is None:
        stmt = select(*columns).where(RunMetric.run_id == run_id).order_by(RunMetric.split, RunMetric.step)
    else:
        numbered = select(*columns,
                          func.row_number().over(partition_by=RunMetric.split, order_by=RunMetric.step).label("n"),
                          func.count().over(partition_by=RunMetric.split).label("total")
                          ).where(RunMetric.run_id == run_id).subquery()
        stride = func.greatest(1, cast(func.ceil(numbered.c.total / float(max_points)), Integer))
        stmt = (select(numbered.c.split, numbered.c.step, numbered.c.loss, numbered.c.learning_rate,
                       numbered.c.tokens_per_second)
                .where(or_((numbered.c.n - 1) % stride == 0, numbered.c.n == numbered.c.total))
                .order_by(numbered.c.split, numbered.c.step))
    series: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for row in db.session.execute(stmt):
        series[row.split].append({"step": row.step, "loss": row.loss, "learning_rate": row.learning_rate,
                                  "tokens_per_second": row.tokens_per_second})
    return series


@dataclass
class RunPage:
    runs: list[TunixRun]
    next_cursor: str | None


def encode_cursor(created_at: datetime, run_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Parse a page cursor; raises ValueError when it is not one this service made."""
    try:
        raw = base64.urlsafe_b64decode(cursor[:200] + "=" * (-len(cursor[:200]) % 4)).decode()
        created, run_id = raw.split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("a cursor's time has its zone")
        # In UTC: Python takes offsets up to ±23:59, Postgres only up to ±15:59.
        return when.astimezone(timezone.utc), uuid.UUID(run_id)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise ValueError("is not a valid page cursor") from exc


def list_runs(*, status: str | None = None, mode: str | None = None, dataset_key: str | None = None,
              tag: str | None = None, user: str | None = None, limit: int = 25,
              cursor: str | None = None) -> RunPage:
    """Runs newest first, filtered (`user` is a username), one keyset page at a time."""
    stmt = list_runs_query(status=status, mode=mode, dataset_key=dataset_key, tag=tag, user=user, limit=limit,
                           cursor=cursor)
    runs = list(db.session.scalars(stmt))
    next_cursor = encode_cursor(runs[limit - 1].created_at, runs[limit - 1].id) if len(runs) > limit else None
    return RunPage(runs[:limit], next_cursor)


def list_runs_query(*, status: str | None = None, mode: str | None = None, dataset_key: str | None = None,
                    tag: str | None = None, user: str | None = None, limit: int = 25, cursor: str | None = None):
    """The list's SELECT (one more row than the page, to know whether another follows)."""
    stmt = select(TunixRun)
    if user:
        stmt = stmt.where(TunixRun.created_by == select(User.id).where(User.username == user).scalar_subquery())
    if tag:
        stmt = stmt.where(TunixRun.tags.contains([tag]))
    # The first filter among status, mode and dataset leads: its index, (column, created_at, id), is the
    # one to walk. Written `= ANY(ARRAY[value])` and ordered by that column too, so that no other index
    # gives the order: with a plain `=` the planner may walk the created index instead and filter out
    # whole stretches of it (22-44 ms, a cursor deep in a million runs).
    lead = None
    for column, value in ((TunixRun.status, status), (TunixRun.mode, mode), (TunixRun.dataset_key, dataset_key)):
        if not value:
            continue
        if lead is None:
            lead = column
            stmt = stmt.where(column == any_(literal([value], ARRAY(String))))
        else:
            stmt = stmt.where(column == value)
    if cursor:
        created, run_id = decode_cursor(cursor)
        # A row comparison is an index condition on (..., created_at, id); the equivalent OR is a filter
        # Postgres applies while it walks the index from the top (seconds, deep in a million runs).
        stmt = stmt.where(tuple_(TunixRun.created_at, TunixRun.id) < tuple_(created, run_id))
    order = (TunixRun.created_at.desc(), TunixRun.id.desc())
    return stmt.order_by(*((lead.desc(),) if lead is not None else ()), *order).limit(limit + 1)


# Kept per process until the run (or, for a place in the queue, the queue) is named by a notification.
_fragment_states = FeedCache(RUNS, size=20_000)
_queue_positions = FeedCache(QUEUE, size=20_000)


def fragment_state(run_id: str):
    """What decides whether a run's status fragment changed: its version and status (and, for a pending
    run, its place in the queue). One read by primary key, or none while the run has not changed since
    this process last read it. None for an unknown or malformed id."""
    try:
        parsed = uuid.UUID(str(run_id))
    except ValueError:
        return None
    return _fragment_states.get(str(parsed), lambda: db.session.execute(
        select(TunixRun.id, TunixRun.version, TunixRun.status, TunixRun.queued_at, TunixRun.devices)
        .where(TunixRun.id == parsed)).first())


def status_row(run_id: str):
    """The columns of a run's status (as the API's status call shows it), read afresh; None for an unknown id."""
    return db.session.execute(select(TunixRun.id, TunixRun.status, TunixRun.queued_at, TunixRun.started_at,
                                     TunixRun.completed_at, TunixRun.exit_code)
                              .where(TunixRun.id == uuid.UUID(run_id))).first()


QUEUE_COUNT_LIMIT = 200  # runs ahead counted exactly; past this the page says "over 200 runs ahead"


@dataclass(frozen=True)
class QueuePosition:
    position: int  # 1 for the next run a worker will claim; a lower bound when not exact
    exact: bool


def queue_position(run) -> QueuePosition | None:
    """Where a pending run stands in the queue; None when it is not pending.

    The count walks the pending index from its head and stops after QUEUE_COUNT_LIMIT entries,
    so a poll costs the same with a hundred or a million runs queued.
    """
    if run.status != PENDING or run.queued_at is None:
        return None

    def count() -> QueuePosition:
        ahead = select(TunixRun.id).where(
            TunixRun.status == PENDING,
            tuple_(TunixRun.queued_at, TunixRun.id) < tuple_(run.queued_at, run.id)).limit(QUEUE_COUNT_LIMIT)
        counted = int(db.session.scalar(select(func.count()).select_from(ahead.subquery())))
        return QueuePosition(counted + 1, counted < QUEUE_COUNT_LIMIT)

    # Counted again only once the queue has moved (a run entered or left it) since this process counted.
    return _queue_positions.get((str(run.id), run.queued_at), count)


_running_since = FeedCache(QUEUE, size=1)


def running_since(limit: int) -> list[float]:
    """When the queued runs now running started (epoch seconds, oldest first, at most `limit`); read again
    once the queue moves (a worker that ends a run claims the next one)."""
    def read() -> tuple[float, ...]:
        return tuple(float(t) for t in db.session.scalars(
            select(func.extract("epoch", TunixRun.started_at))
            .where(TunixRun.status.in_((RUNNING, CANCELLING)), TunixRun.mode == ASYNC,
                   TunixRun.started_at.is_not(None))
            .order_by(TunixRun.started_at).limit(QUEUE_COUNT_LIMIT)))
    return list(_running_since.get(WHOLE, read))[:limit]


_typical: tuple[float, float | None] | None = None  # (when, value): every pending page asks for it


def typical_run_seconds(sample: int = 20, reuse_seconds: float = 0.0) -> float | None:
    """The median duration of the latest completed queued runs; None before there is one.

    Within `reuse_seconds` of the last reading in this process, that reading is returned.
    """
    global _typical
    now = time.monotonic()
    if _typical is not None and now - _typical[0] < reuse_seconds:
        return _typical[1]
    durations = sorted(db.session.scalars(
        select(TunixRun.duration_seconds).where(TunixRun.status == COMPLETED, TunixRun.mode == ASYNC,
                                                TunixRun.duration_seconds.is_not(None))
        .order_by(TunixRun.created_at.desc()).limit(sample)))
    _typical = (now, float(durations[len(durations) // 2]) if durations else None)
    return _typical[1]


def runs_by_ids(run_ids: list[uuid.UUID]) -> list[TunixRun]:
    """The runs with these ids (unknown ids are left out), in no particular order."""
    return list(db.session.scalars(select(TunixRun).where(TunixRun.id.in_(run_ids)))) if run_ids else []


def retries_of(run_id: uuid.UUID) -> list[uuid.UUID]:
    """Runs started as retries of this one, oldest first."""
    return list(db.session.scalars(select(TunixRun.id).where(TunixRun.retry_of == run_id)
                                   .order_by(TunixRun.created_at)))
