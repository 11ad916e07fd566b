"""The run service: creates runs and moves them between states (reads live in run_queries).

Every status change goes through `transition`, a compare-and-set against the state
machine in `run_states`; sync, async, dry_run and the worker all call it.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import datasets, metrics, run_config, run_states, training_plan
from app.extensions import db
from app.models import TunixRun
from app.queue_channels import CANCEL_CHANNEL, QUEUE_CHANNEL, notify
from app.run_states import CANCELLED, CANCELLING, FAILED, LEASED_STATUSES, PENDING, RUNNING

log = logging.getLogger(__name__)


class RunSubmissionError(ValueError):
    """The submission is invalid; `details` maps each field to its problem."""

    def __init__(self, details: dict[str, str]):
        super().__init__("invalid run submission")
        self.details = details


class IdempotencyConflict(Exception):
    """An Idempotency-Key was reused for a different submission."""

    def __init__(self, run: TunixRun):
        super().__init__("Idempotency-Key already used for a different submission")
        self.run = run


class InvalidTransition(RuntimeError):
    """A caller asked for a move the state machine does not allow."""


class RunConflict(Exception):
    """The run is not in a state that allows the request (e.g. cancelling a finished run)."""


def validate_submission(raw: dict[str, Any]) -> dict[str, Any]:
    """Full validated config, or RunSubmissionError naming every bad field (dataset included)."""
    try:
        config = run_config.validate_run_config(raw)
    except run_config.RunConfigError as exc:
        details = dict(exc.details)
        key = raw.get("dataset_key") if isinstance(raw, dict) else None
        if "dataset_key" not in details and isinstance(key, str) and key.strip():
            if datasets.get_dataset(key.strip()) is None:
                details["dataset_key"] = f"unknown dataset {key.strip()!r}"
        raise RunSubmissionError(details) from None
    if datasets.get_dataset(config["dataset_key"]) is None:
        raise RunSubmissionError({"dataset_key": f"unknown dataset {config['dataset_key']!r}"})
    return config


def submit_run(raw: dict[str, Any], mode: str, idempotency_key: str | None = None,
               retry_of: uuid.UUID | None = None) -> tuple[TunixRun, bool]:
    """Validate and persist a run; returns (run, created). Does not execute it.

    async runs start pending (a worker claims them); sync and dry_run runs start
    running because the request itself carries them out.
    """
    if mode not in run_states.MODES:
        raise RunSubmissionError({"mode": f"must be one of {', '.join(run_states.MODES)}"})
    config = validate_submission(raw)
    if idempotency_key:
        existing = _find_by_idempotency_key(idempotency_key)
        if existing is not None:
            return _replay(existing, mode, config), False

    now = func.now()
    values = {
        "id": uuid.uuid4(), "mode": mode, "dataset_key": config["dataset_key"], "model_id": config["model_id"],
        "config": config, "idempotency_key": idempotency_key or None, "created_at": now, "retry_of": retry_of,
        # Only a queued run can be re-queued; one carried out inside a request gets one start.
        "max_attempts": config["max_attempts"] if mode == "async" else 1,
    }
    if mode == "async":
        values.update(status=PENDING, queued_at=now)
    else:
        values.update(status=RUNNING, started_at=now, heartbeat_at=now, attempt=1,
                      worker_id=f"web:{_process_label()}")
    stmt = pg_insert(TunixRun).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])
    with metrics.timed_db_write("create_run"):
        inserted = db.session.execute(stmt.returning(TunixRun.id)).scalar()
        if inserted is not None and mode == "async":
            notify(db.session, QUEUE_CHANNEL, str(inserted))
        db.session.commit()
    if inserted is None:  # another request with the same key won the race
        return _replay(_find_by_idempotency_key(idempotency_key), mode, config), False
    run = db.session.get(TunixRun, inserted)
    log.info("run %s created mode=%s status=%s dataset=%s model=%s", run.id, mode, run.status,
             run.dataset_key, run.model_id)
    return run, True


def _replay(existing: TunixRun, mode: str, config: dict[str, Any]) -> TunixRun:
    if existing.mode != mode or existing.config != config:
        raise IdempotencyConflict(existing)
    return existing


def _find_by_idempotency_key(key: str) -> TunixRun | None:
    return db.session.scalar(select(TunixRun).where(TunixRun.idempotency_key == key))


def _process_label() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def transition(run_id: uuid.UUID, from_status: str | tuple[str, ...], to_status: str, *,
               held_by: str | None = None, held_attempt: int | None = None, **fields: Any) -> bool:
    """Move a run to `to_status` if it is still in `from_status` (compare-and-set).

    `from_status` may be several statuses. With `held_by` and `held_attempt`, the run must
    also still be that worker's claim, so a worker that lost its lease cannot write.
    Entering a terminal state stamps completed_at and the duration; entering pending
    or cancelling notifies the workers in the same transaction. Returns False when
    the run had moved on.
    """
    sources = (from_status,) if isinstance(from_status, str) else tuple(from_status)
    for source in sources:
        if not run_states.can_transition(source, to_status):
            raise InvalidTransition(f"{source} -> {to_status} is not allowed")
    values: dict[str, Any] = {"status": to_status, **fields}
    if run_states.is_terminal(to_status):
        values["completed_at"] = func.now()
        values["duration_seconds"] = func.extract("epoch", func.now() - TunixRun.started_at)
    conditions = [TunixRun.id == run_id, TunixRun.status.in_(sources)]
    if held_by is not None:
        conditions.append(TunixRun.worker_id == held_by)
    if held_attempt is not None:
        conditions.append(TunixRun.attempt == held_attempt)
    stmt = (update(TunixRun).where(*conditions).values(**values)
            .returning(TunixRun.mode, TunixRun.duration_seconds))
    with metrics.timed_db_write("transition"):
        row = db.session.execute(stmt).first()
        if row is not None and to_status == PENDING:
            notify(db.session, QUEUE_CHANNEL, str(run_id))
        elif row is not None and to_status == CANCELLING:
            notify(db.session, CANCEL_CHANNEL, str(run_id))
        db.session.commit()
    wanted = "/".join(sources)
    if row is None:
        log.info("run %s: %s -> %s refused, it is no longer %s%s", run_id, wanted, to_status, wanted,
                 f" held by {held_by}" if held_by else "")
        return False
    log.info("run %s: %s -> %s%s", run_id, wanted, to_status,
             f" ({fields['error_message']})" if fields.get("error_message") else "")
    if run_states.is_terminal(to_status):
        metrics.observe_run_finished(row.mode, to_status, row.duration_seconds)
    return True


def finish_run(run: TunixRun, outcome, *, held_by: str | None = None, attempt: int | None = None) -> bool:
    """Store an execution outcome (from the execution module) and move the run to its final status.

    The run may have been asked to cancel meanwhile; an outcome that arrived first still wins.
    """
    return transition(run.id, LEASED_STATUSES, outcome.status, held_by=held_by, held_attempt=attempt,
                      exit_code=outcome.exit_code, error_message=outcome.error_message,
                      stdout_tail=outcome.stdout, stderr_tail=outcome.stderr, result=outcome.summary)


def renew_lease(run_id: uuid.UUID, worker_id: str, attempt: int) -> str | None:
    """Refresh the heartbeat of a run this worker holds; its status, or None when the lease is lost."""
    stmt = (update(TunixRun)
            .where(TunixRun.id == run_id, TunixRun.worker_id == worker_id, TunixRun.attempt == attempt,
                   TunixRun.status.in_(LEASED_STATUSES))
            .values(heartbeat_at=func.now()).returning(TunixRun.status))
    with metrics.timed_db_write("heartbeat"):
        status = db.session.execute(stmt).scalar()
        db.session.commit()
    return status


def hand_back(run_id: uuid.UUID, worker_id: str, attempt: int, reason: str) -> bool:
    """Return a claimed run to the queue without counting the attempt (a worker shutting down)."""
    if transition(run_id, RUNNING, PENDING, held_by=worker_id, held_attempt=attempt, worker_id=None, heartbeat_at=None,
                  queued_at=func.now(), attempt=TunixRun.attempt - 1, error_message=reason):
        return True
    # Asked to cancel meanwhile: the user's wish is the outcome.
    return transition(run_id, CANCELLING, CANCELLED, held_by=worker_id, held_attempt=attempt,
                      error_message="cancelled by user")


def recover_one_expired_lease(lease_timeout_seconds: float) -> tuple[uuid.UUID, str] | None:
    """Recover one running run whose heartbeat is older than the lease; None when there is none.

    It goes back to pending while it has attempts left, else to failed ("worker lost");
    a run that was being cancelled becomes cancelled. The compare-and-set on (status,
    worker, attempt) means a worker that heartbeats in time keeps its run.
    """
    row = db.session.execute(text("""
        SELECT id, status, mode, worker_id, attempt, max_attempts,
               extract(epoch FROM now() - heartbeat_at) AS silent_for
        FROM tunix_runs
        WHERE status IN ('running', 'cancelling') AND heartbeat_at < now() - make_interval(secs => :lease)
        ORDER BY heartbeat_at LIMIT 1
        FOR UPDATE SKIP LOCKED"""), {"lease": lease_timeout_seconds}).first()
    if row is None:
        db.session.rollback()
        return None
    silence = f"no heartbeat from {row.worker_id} for {row.silent_for:.0f} s"
    guard = {"held_by": row.worker_id, "held_attempt": row.attempt}
    if row.status == CANCELLING:
        new_status, done = CANCELLED, transition(row.id, CANCELLING, CANCELLED, **guard,
                                                 error_message=f"cancelled by user; worker lost ({silence})")
    elif row.mode == "async" and row.attempt < row.max_attempts:
        new_status, done = PENDING, transition(
            row.id, RUNNING, PENDING, **guard, worker_id=None, heartbeat_at=None, queued_at=func.now(),
            recoveries=TunixRun.recoveries + 1,
            error_message=f"re-queued: worker lost ({silence}); attempt {row.attempt} of {row.max_attempts} used")
    else:
        new_status, done = FAILED, transition(row.id, RUNNING, FAILED, **guard,
                                              recoveries=TunixRun.recoveries + 1,
                                              error_message=f"worker lost ({silence})")
    return (row.id, new_status) if done else None


def cancel_run(run: TunixRun) -> TunixRun:
    """Cancel a run: pending ones at once, running ones through their worker. RunConflict when finished."""
    for _ in range(3):  # the run may move under us (claimed, finished); look again
        if run.status == PENDING and transition(run.id, PENDING, CANCELLED, cancel_requested_at=func.now(),
                                                error_message="cancelled by user"):
            break
        if run.status == RUNNING and transition(run.id, RUNNING, CANCELLING, cancel_requested_at=func.now()):
            break
        if run.status == CANCELLING:
            break
        if run_states.is_terminal(run.status):
            raise RunConflict(f"run {run.id} is already {run.status}; only a pending or running run can be cancelled")
        refresh(run)
    return refresh(run)


def retry_run(run: TunixRun) -> TunixRun:
    """A new run with the same config, linked to this one; only for a finished run."""
    if not run_states.is_terminal(run.status):
        raise RunConflict(f"run {run.id} is {run.status}; only a finished run can be retried")
    mode = "dry_run" if run.mode == "dry_run" else "async"
    new_run, _ = submit_run(dict(run.config), mode, retry_of=run.id)
    return new_run


def plan_dry_run(run: TunixRun) -> bool:
    """Carry out a dry run: check the dataset and the config, store the plan, end the run."""
    examples = list(datasets.iter_examples(run.dataset_key))
    try:
        plan = training_plan.plan_run(run.config, examples)
    except training_plan.PlanError as exc:
        plan = {"ok": False, "problems": [str(exc)]}
    status = run_states.COMPLETED if plan["ok"] else run_states.FAILED
    error = None if plan["ok"] else "dry run found problems: " + "; ".join(plan["problems"])
    return transition(run.id, RUNNING, status, result=plan, error_message=error, exit_code=None)


def prepare_run_directory(run: TunixRun, artifacts_root) -> Path:
    """Write the run's directory (config and dataset export) for the trainer."""
    from app.tunix_execution import write_run_directory

    return write_run_directory(artifacts_root, run.id, run.config, datasets.iter_examples(run.dataset_key))


def rollback() -> None:
    """Drop whatever the session was in the middle of (after an error)."""
    db.session.rollback()


def refresh(run: TunixRun) -> TunixRun:
    db.session.refresh(run)
    return run
