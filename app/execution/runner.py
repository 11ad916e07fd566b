"""The one execution path of a leased run, for a sync request and a worker alike.

`execute_leased_run` prepares the run directory, records progress and output, keeps the
lease alive, runs the trainer subprocess, and settles what it came to: the outcome is
stored, the run handed back (shutdown), or nothing is written (the lease was lost). The
caller adds only what is its own: the worker its shutdown stop, its wake-ups and its
housekeeping (`extra_tick`), and its retries of database writes through an outage (`persist`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from app.contract.device_mesh import Placement, first_devices
from app.contract.run_files import PREDICTIONS_FILE
from app.execution.lease import RunLease
from app.execution.recorder import ProgressRecorder
from app.execution.run_directory import prepare_run_directory
from app.execution.tunix_execution import (STOP_LEASE_LOST, STOP_SHUTDOWN, ExecutionSettings, ProcessOutcome,
                                           StopRequest, parse_execution_result, run_tunix_subprocess)
from app.extensions import db
from app.queue import store as queue_store
from app.runs import evaluation as run_evaluation, lifecycle
from app.runs.lifecycle import LeasedRun
from app.sweeps import service as sweep_service

log = logging.getLogger(__name__)

T = TypeVar("T")
ExtraTick = Callable[[RunLease], "StopRequest | None"]


def _once(write: Callable[[], T]) -> T:
    return write()


def execute_leased_run(run: LeasedRun, settings: ExecutionSettings, *, where: str = "server",
                       placement: Placement | None = None, extra_tick: ExtraTick | None = None,
                       persist: Callable[[Callable[[], T]], T | None] = _once) -> str:
    """Carry out a run this process holds, end to end; returns what became of it, in words for the log.

    `placement` names the devices its trainer may use (a sync run: the first it asks for).
    The run never stays running because of this process: an error around the trainer
    fails the run with its reason ("`where` error (...)"), and after a lost lease the
    compare-and-set refuses every write, since the recovering side owns the run.
    """
    lease = RunLease(run.id, run.lease, settings.heartbeat_seconds, settings.kill_grace_seconds)
    try:
        # The dataset export reads the database: an outage right after the claim is waited out
        # (by the worker's persist), not taken for a failure of the run.
        run_dir = persist(lambda: prepare_run_directory(run, settings.artifacts_root))
        if run_dir is None:
            return "not started: the database stayed unreachable; its lease will expire and it will be recovered"
        _end_transaction()  # end the dataset read: no transaction stays open while the trainer runs
        recorder = ProgressRecorder(run.id, log_max_bytes=settings.log_max_bytes)
        on_event = recorder.on_event
        if run.sweep_id is not None:  # a trial reports its eval losses to its sweep, which may prune it
            reporter = sweep_service.TrialReporter(run.id, run.sweep_id)

            def on_event(event, record=recorder.on_event):
                record(event)
                _guarded(lambda: reporter.on_event(event), f"run {run.id}: reporting to its sweep")

        def on_tick() -> StopRequest | None:
            recorder.on_tick()
            stop = lease.tick()
            if stop is None and extra_tick is not None:
                stop = extra_tick(lease)
            return stop

        outcome = run_tunix_subprocess(run_dir, settings, on_event=on_event, on_output=recorder.on_output,
                                       on_tick=on_tick, placement=placement or first_devices(run.devices))
        recorder.flush()
    except Exception as exc:
        log.exception("run %s: failed inside the %s", run.id, where)
        _end_transaction()
        reason = f"{where} error ({type(exc).__name__}: {str(exc)[:300]}); the {where} log has the details"
        persist(lambda: lifecycle.fail(run.id, reason, lease=run.lease))
        return "failed inside the " + where
    settled = _settle(run, run_dir, outcome, settings, persist)
    if run.sweep_id is not None:  # the trial ended: its sweep may tell the study and queue the next
        _guarded(lambda: sweep_service.advance(run.sweep_id), f"sweep {run.sweep_id}: advancing")
    return settled


def _end_transaction() -> None:
    """End the session's transaction. If Postgres went away meanwhile (a crash right after the claim),
    the rollback is the first to find out: the connection is gone, and so is the transaction."""
    try:
        db.session.rollback()
    except (OperationalError, InterfaceError) as exc:
        log.warning("the database connection was lost (%s); going on without it", type(exc).__name__)
        db.session.close()


def _guarded(step: Callable[[], object], what: str) -> None:
    """A sweep's bookkeeping never fails the run that triggered it; housekeeping will try again."""
    try:
        step()
    except Exception:
        db.session.rollback()
        log.exception("%s failed; the workers' housekeeping will retry", what)


def _settle(run: LeasedRun, run_dir: Path, outcome: ProcessOutcome, settings: ExecutionSettings, persist) -> str:
    """Store what the execution came to, as long as this process still holds the run."""
    if outcome.stop_reason == STOP_LEASE_LOST:
        return "lease lost; its trainer was killed and nothing is stored by this process"
    if outcome.stop_reason == STOP_SHUTDOWN:
        handed = persist(lambda: queue_store.hand_back(
            run.id, run.lease, f"handed back by worker {run.lease.holder} on shutdown"))
        return "handed back to the queue (pending again, attempt not counted)" + (
            "" if handed else ": refused, it had moved on")
    result = parse_execution_result(outcome, settings)
    if (run_dir / PREDICTIONS_FILE).is_file():
        # Before the outcome: a run that reads completed already has its predictions to show.
        persist(lambda: run_evaluation.store_predictions(run.id, run_dir / PREDICTIONS_FILE))
    stored = persist(lambda: lifecycle.finish(
        run.id, result.status, lease=run.lease, exit_code=result.exit_code, error_message=result.error_message,
        stdout=result.stdout, stderr=result.stderr, result=result.summary))
    return f"finished {result.status} (exit code {result.exit_code})" + (
        "" if stored else "; not stored: the run had moved on")
