"""A run's moves between states: one compare-and-set (`transition`) and the named moves built on it.

This module is the only code that writes a run's status. Each named move (claim, requeue,
finish, fail, cancel) sets its own columns here and nowhere else: through `transition`, or,
for the two moves a worker makes on every run (claim and finish), through a compare-and-set of
their own written as plain SQL. Every time it stores is the time of the event
(`clock_timestamp()`), not the start of the caller's transaction, which may have been open
for a while.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from psycopg2.errors import LockNotAvailable
from psycopg2.extras import Json
from sqlalchemy import func, update
from sqlalchemy.exc import OperationalError

from app import instruments
from app.extensions import db
from app.models import TunixRun
from app import run_states as states
from app.runs import evaluation
from app.runs.channels import CANCEL_CHANNEL, QUEUE_CHANNEL, notify
from app.run_states import (CANCELLED, CANCELLED_BY_USER, CANCELLING, FAILED, LEASED_STATUSES, PENDING,
                             RUNNING)

log = logging.getLogger(__name__)


class InvalidTransition(RuntimeError):
    """A caller asked for a move the state machine does not allow."""


def event_time():
    """The database's clock at this statement (now() would be the transaction's start)."""
    return func.clock_timestamp()


@dataclass(frozen=True)
class Lease:
    """Who holds a running run: a worker (or a web process, for sync runs) and the attempt it claimed."""

    holder: str
    attempt: int


@dataclass(frozen=True)
class LeasedRun:
    """What an execution needs of the run it holds, as plain values (no open transaction behind them)."""

    id: uuid.UUID
    mode: str
    dataset_key: str
    config: dict[str, Any]
    max_attempts: int
    lease: Lease
    sweep_id: uuid.UUID | None = None  # set when the run is a sweep's trial
    devices: int = 1
    device_ids: tuple[int, ...] | None = None  # the worker's devices it was placed on; None: not placed
    artifacts_url: str | None = None  # where its files are stored; None: the configured store

    @classmethod
    def of(cls, run: TunixRun) -> "LeasedRun":
        return cls(run.id, run.mode, run.dataset_key, dict(run.config), run.max_attempts,
                   Lease(run.worker_id, run.attempt), run.sweep_id, run.devices, artifacts_url=run.artifacts_url)


def transition(run_id: uuid.UUID, from_status: str | tuple[str, ...], to_status: str, *,
               lease: Lease | None = None, **fields: Any) -> bool:
    """Move a run to `to_status` if it is still in `from_status` (compare-and-set).

    `from_status` may be several statuses. With a `lease`, the run must also still be
    that holder's claim, so an execution that lost its lease cannot write. Entering a
    terminal state stamps completed_at and the duration; entering pending or cancelling
    notifies the workers in the same transaction. Returns False when the run had moved on.
    """
    return _transition(TunixRun.id == run_id, run_id, from_status, to_status, lease=lease, **fields) is not None


def _transition(which, run_id, from_status: str | tuple[str, ...], to_status: str, *, lease: Lease | None = None,
                returning: tuple = (), **fields: Any):
    """The compare-and-set of `transition`, on the run `which` picks; the returned row (mode, duration,
    id and `returning`), or None when no run was in `from_status`."""
    sources = (from_status,) if isinstance(from_status, str) else tuple(from_status)
    for source in sources:
        if not states.can_transition(source, to_status):
            raise InvalidTransition(f"{source} -> {to_status} is not allowed")
    values: dict[str, Any] = {"status": to_status, "version": TunixRun.version + 1, **fields}
    if states.is_terminal(to_status):
        values["completed_at"] = event_time()
        values["duration_seconds"] = func.extract("epoch", event_time() - TunixRun.started_at)
    conditions = [which, TunixRun.status.in_(sources)]
    if lease is not None:
        conditions += [TunixRun.worker_id == lease.holder, TunixRun.attempt == lease.attempt]
    # No synchronising of loaded objects: callers re-read the run (2 of the claim path's 17 ms went there).
    stmt = (update(TunixRun).where(*conditions).values(**values).execution_options(synchronize_session=False)
            .returning(TunixRun.id, TunixRun.mode, TunixRun.duration_seconds, *returning))
    with instruments.timed_db_write("transition"):
        row = db.session.execute(stmt).first()
        if row is not None and to_status == PENDING:
            notify(db.session, QUEUE_CHANNEL, str(row.id))
        elif row is not None and to_status == CANCELLING:
            notify(db.session, CANCEL_CHANNEL, str(row.id))
        db.session.commit()
    wanted = "/".join(sources)
    if row is None:
        if run_id is not None:
            log.info("run %s: %s -> %s refused, it is no longer %s%s", run_id, wanted, to_status, wanted,
                     f" held by {lease.holder}" if lease else "")
        return None
    log.info("run %s: %s -> %s%s", row.id, wanted, to_status,
             f" ({fields['error_message']})" if fields.get("error_message") else "")
    if states.is_terminal(to_status):
        instruments.observe_run_finished(row.mode, to_status, row.duration_seconds)
    return row


# The two moves a worker makes on every run, as SQL the driver runs as written, each its own
# transaction. Through the ORM a claim and a finish cost 5.9 ms, of which Postgres took 2.5 ms.
_CLAIM_SQL = f"""
UPDATE tunix_runs SET status = '{RUNNING}', version = version + 1, worker_id = %(worker)s, attempt = attempt + 1,
       started_at = clock_timestamp(), heartbeat_at = clock_timestamp(), cancel_requested_at = NULL,
       device_ids = (%(free_ids)s::int[])[1:devices]
WHERE id = ({{pick}}) AND status = '{PENDING}'
RETURNING id, mode, dataset_key, config, max_attempts, worker_id, attempt, sweep_id, devices, device_ids,
          artifacts_url
"""
_FINISH_SQL = f"""
UPDATE tunix_runs SET status = %(status)s, version = version + 1, completed_at = clock_timestamp(),
       duration_seconds = extract(epoch FROM clock_timestamp() - started_at), exit_code = %(exit_code)s,
       error_message = %(error_message)s, stdout_tail = %(stdout)s, stderr_tail = %(stderr)s,
       result = %(result)s::jsonb,
       final_loss = %(final_loss)s, final_eval_loss = %(final_eval_loss)s, evaluated_on = %(evaluated_on)s,
       answer_match = %(answer_match)s, exact_match = %(exact_match)s
WHERE id = %(id)s AND status IN ({", ".join(f"'{s}'" for s in LEASED_STATUSES)})
  AND (%(holder)s::text IS NULL OR (worker_id = %(holder)s AND attempt = %(attempt)s))
RETURNING id, mode, duration_seconds
"""


_LEASED = "/".join(LEASED_STATUSES)


# A worker's own connection for its claims and finishes (see own_connection), per thread.
_own = threading.local()
OWN_LOCK_WAIT_MS = 5000  # how long a statement on it may wait for a lock before going through the session
OWN_APPLICATION_NAME = "tunix-rt-run-moves"  # as pg_stat_activity shows it


@contextlib.contextmanager
def own_connection(lock_wait_ms: int = OWN_LOCK_WAIT_MS) -> Iterator[None]:
    """Within this block, this thread's claims and finishes run on a connection of their own (opened at
    the first of them, and again after one is lost).

    A worker makes them back to back, and the session's bookkeeping around each transaction (a
    connection out of the pool and back, a transaction begun and closed) cost as much as the
    statements themselves (bench/queue_claim.py). A statement on that connection that waits
    `lock_wait_ms` for a lock (one held by this thread's own session, say, which would wait on it
    forever) gives up and goes through the session instead.
    """
    _own.lock_wait_ms, _own.connection = lock_wait_ms, None
    try:
        yield
    finally:
        connection, _own.connection, _own.lock_wait_ms = _own.connection, None, None
        if connection is not None:
            # Closed for good, not pooled: its prepared statements, lock_timeout and name are its own, and
            # another thread's own connection would meet them there.
            with contextlib.suppress(Exception):
                connection.invalidate()
            connection.close()


def _own_connection():
    """This thread's own connection, opened now if it wants one and has none; None when it wants none."""
    if getattr(_own, "lock_wait_ms", None) is None:
        return None
    if _own.connection is None:
        connection = db.engine.connect()
        connection.exec_driver_sql(f"SET lock_timeout = {int(_own.lock_wait_ms)}")
        connection.exec_driver_sql(f"SET application_name = '{OWN_APPLICATION_NAME}'")
        connection.commit()
        _own.connection, _own.prepared = connection, {}
    return _own.connection


_PARAMETER = re.compile(r"%\((\w+)\)s")


def _execute_prepared(connection, sql: str, params: dict[str, Any]):
    """Run `sql` as a statement prepared once on this connection: planned once, not at every call."""
    found = _own.prepared.get(sql)
    if found is None:
        names = list(dict.fromkeys(_PARAMETER.findall(sql)))
        positional = _PARAMETER.sub(lambda m: f"${names.index(m[1]) + 1}", sql)
        found = (f"tunix_run_move_{len(_own.prepared)}", names)
        connection.exec_driver_sql(f"PREPARE {found[0]} AS {positional}")
        _own.prepared[sql] = found
    name, names = found
    return connection.exec_driver_sql(f"EXECUTE {name}({', '.join(f'%({n})s' for n in names)})", params)


def _write(sql: str, params: dict[str, Any], metric: str):
    """One statement and its commit, durable before it returns; the row it returned, or None.

    A claim too waits for the disk: a claim a crash could undo would leave its trainer running while
    the run is pending again, for another worker to start a second trainer on."""
    with instruments.timed_db_write(metric):
        own = _own_connection()
        if own is not None:
            try:
                row = _execute_prepared(own, sql, params).first()
                own.commit()
                return row
            except OperationalError as error:
                if not isinstance(error.orig, LockNotAvailable):
                    _own.connection = None  # lost, most likely: the next statement opens another
                    with contextlib.suppress(Exception):
                        own.close()
                    raise
                own.rollback()
                # Whether a PREPARE made in that transaction outlived it or not, start again from none.
                own.exec_driver_sql("DEALLOCATE ALL")
                own.commit()
                _own.prepared = {}
                log.info("%s waited %d ms for a lock on its own connection; going through the session",
                         metric, _own.lock_wait_ms)
        row = db.session.connection().exec_driver_sql(sql, params).first()
        db.session.commit()
        return row


def claim(pick: str, worker_id: str, free_ids: list[int], **pick_params: Any) -> LeasedRun | None:
    """pending -> running for this worker, on the run `pick` chooses (the SQL of the queue's locking
    subquery, with its parameters): a new attempt with a fresh heartbeat, placed on the first of the
    worker's `free_ids` (sorted) it needs, and what the execution needs, in one statement."""
    row = _write(_CLAIM_SQL.format(pick=pick), {"worker": worker_id, "free_ids": sorted(free_ids), **pick_params},
                 "claim")
    if row is None:
        return None
    log.info("run %s: %s -> %s on devices %s", row.id, PENDING, RUNNING, row.device_ids)
    return LeasedRun(row.id, row.mode, row.dataset_key, dict(row.config), row.max_attempts,
                     Lease(row.worker_id, row.attempt), row.sweep_id, row.devices, tuple(row.device_ids or ()),
                     row.artifacts_url)


def requeue(run_id: uuid.UUID, lease: Lease, reason: str, *, recovered: bool) -> bool:
    """running -> pending, the lease released. A recovery counts the attempt; a hand-back does not."""
    counters = ({"recoveries": TunixRun.recoveries + 1} if recovered
                else {"attempt": TunixRun.attempt - 1})
    return transition(run_id, RUNNING, PENDING, lease=lease, worker_id=None, heartbeat_at=None, device_ids=None,
                      queued_at=event_time(), error_message=reason, **counters)


def finish(run_id: uuid.UUID, status: str, *, lease: Lease | None = None, exit_code: int | None = None,
           error_message: str | None = None, stdout: str | None = None, stderr: str | None = None,
           result: dict[str, Any] | None = None) -> bool:
    """A leased run ends with what its execution (or its dry-run plan) came to.

    The run may have been asked to cancel meanwhile; an outcome that arrived first still wins.
    """
    for source in LEASED_STATUSES:
        if not states.can_transition(source, status) or not states.is_terminal(status):
            raise InvalidTransition(f"{source} -> {status} is not a finish")
    scores = {"final_loss": None, "final_eval_loss": None, "evaluated_on": None, "answer_match": None,
              "exact_match": None, **evaluation.score_columns(result)}
    row = _write(_FINISH_SQL, {
        "id": run_id, "status": status, "holder": lease.holder if lease else None,
        "attempt": lease.attempt if lease else None, "exit_code": exit_code, "error_message": error_message,
        "stdout": stdout, "stderr": stderr, "result": None if result is None else Json(result), **scores},
        "finish")
    if row is None:
        log.info("run %s: %s -> %s refused, it is no longer %s%s", run_id, _LEASED, status, _LEASED,
                 f" held by {lease.holder}" if lease else "")
        return False
    log.info("run %s: %s -> %s%s", row.id, _LEASED, status, f" ({error_message})" if error_message else "")
    instruments.observe_run_finished(row.mode, status, row.duration_seconds)
    return True


def fail(run_id: uuid.UUID, reason: str, *, lease: Lease | None = None, recovered: bool = False) -> bool:
    """A leased run fails for a reason outside the trainer (an internal error, a lost worker)."""
    extra = {"recoveries": TunixRun.recoveries + 1} if recovered else {}
    return transition(run_id, LEASED_STATUSES if not recovered else RUNNING, FAILED, lease=lease,
                      error_message=reason, **extra)


def cancel(run_id: uuid.UUID, status: str) -> bool:
    """The user's cancel: a pending run ends at once, a running one is asked to stop (cancelling)."""
    if status == PENDING:
        return transition(run_id, PENDING, CANCELLED, cancel_requested_at=event_time(),
                          error_message=CANCELLED_BY_USER)
    if status == RUNNING:
        return transition(run_id, RUNNING, CANCELLING, cancel_requested_at=event_time())
    return False


def confirm_cancel(run_id: uuid.UUID, lease: Lease, reason: str = CANCELLED_BY_USER) -> bool:
    """cancelling -> cancelled, when the execution that held the run is gone or handed it back."""
    return transition(run_id, CANCELLING, CANCELLED, lease=lease, error_message=reason)
