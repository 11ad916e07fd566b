"""The one execution path of a leased run, for a sync request and a worker alike.

`execute_leased_run` prepares the run directory, records progress and output, keeps the
lease alive, runs the trainer subprocess, and settles what it came to: the outcome is
stored, the run handed back (shutdown), or nothing is written (the lease was lost). The
caller adds only what is its own: the worker its shutdown stop, its wake-ups and its
housekeeping (`extra_tick`), and its retries of database writes through an outage (`persist`).
"""
from __future__ import annotations

import logging
import shutil
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from app.artifacts.run_store import RunStore, StoringProgress, run_store
from app.artifacts.store import StoreError
from app.contract.device_mesh import Placement, first_devices
from app.contract.progress_protocol import STORING
from app.contract.run_files import PREDICTIONS_FILE, RUN_LOG_FILE
from app.execution import base_model
from app.execution.lease import RunLease
from app.execution.recorder import ProgressRecorder
from app.execution.run_directory import prepare_run_directory
from app.execution.storing import CheckpointUploader, files_at_end, while_ticking
from app.execution.tunix_execution import (STOP_CANCEL, STOP_LEASE_LOST, STOP_SHUTDOWN, ExecutionSettings,
                                           ProcessOutcome, StopRequest, parse_execution_result, run_tunix_subprocess)
from app.extensions import db
from app.models import TunixRun
from app.queue import store as queue_store
from app.registry import gates
from app.run_states import CANCELLED, CANCELLED_BY_USER, COMPLETED, FAILED
from app.runs import evaluation as run_evaluation, lifecycle, logs
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

    The trainer works in a scratch folder of its own (one per execution, removed at the end); its
    checkpoints are stored as they are finished and its other files when it ends, and the run is
    completed only once they all are. A re-queued run first fetches its last stored checkpoint.
    `placement` names the devices its trainer may use (a sync run: the first it asks for).
    The run never stays running because of this process: an error around the trainer
    fails the run with its reason ("`where` error (...)"), and after a lost lease the
    compare-and-set refuses every write, since the recovering side owns the run.
    """
    scratch = settings.scratch_root / f"{run.id}.{uuid.uuid4().hex[:8]}"
    try:
        return _execute(run, settings, scratch, where, placement, extra_tick, persist)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _Storing:
    """What the execution thread keeps of the storing going on beside it: the phase's progress, and a stop."""

    def __init__(self):
        self.progress = StoringProgress()
        self.stop = threading.Event()
        self.stopped_by: StopRequest | None = None
        self.shown: dict | None = None
        # Before the trainer starts a cancel ends the run; once it has ended, its outcome stands (as
        # lifecycle.finish has it) and only a lost lease stops the storing. A shutdown lets it finish.
        self.stops_on = {STOP_LEASE_LOST, STOP_CANCEL}


def _execute(run: LeasedRun, settings: ExecutionSettings, scratch: Path, where: str, placement: Placement | None,
             extra_tick: ExtraTick | None, persist) -> str:
    lease = RunLease(run.id, run.lease, settings.heartbeat_seconds, settings.kill_grace_seconds)
    storing = _Storing()
    files = run_store(settings.store, run.artifacts_url, run.id, should_stop=storing.stop.is_set,
                      on_retry=lambda attempt, error: storing.progress.on_retry(attempt, error))
    uploader = None
    try:
        # The dataset export reads the database: an outage right after the claim is waited out
        # (by the worker's persist), not taken for a failure of the run.
        prepared = persist(lambda: _prepare(run, scratch))
        if prepared is None:
            return "not started: the database stayed unreachable; its lease will expire and it will be recovered"
        run_dir, base = prepared
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

        def storing_tick() -> None:
            """A tick while files move: the lease kept, the page told how far they are; a stop ends it."""
            shown = storing.progress.snapshot()
            if shown != storing.shown and shown["files_total"]:
                storing.shown = shown
                recorder.update_progress(phase=STORING, storing=shown)
            stop = on_tick()
            if stop is not None and stop.reason in storing.stops_on:
                storing.stopped_by = stop
                storing.stop.set()

        try:
            restored = while_ticking(lambda: files.restore_latest_checkpoint(run_dir), storing_tick, storing.stop)
        except StoreError as exc:
            reason = f"could not fetch its stored checkpoints: {exc}"
            persist(lambda: lifecycle.fail(run.id, reason, lease=run.lease))
            return "failed: " + reason
        if storing.stopped_by is not None and storing.stopped_by.reason == STOP_LEASE_LOST:
            return "lease lost before its trainer started; nothing is stored by this process"
        if storing.stopped_by is not None:
            persist(lambda: lifecycle.finish(run.id, CANCELLED, lease=run.lease, error_message=CANCELLED_BY_USER))
            return "cancelled before its trainer started"
        if base is not None:
            try:
                while_ticking(lambda: base_model.fetch(base, run_dir, settings.store, storing.stop.is_set),
                              storing_tick, storing.stop)
            except (base_model.BaseModelRefused, StoreError) as exc:
                if storing.stopped_by is not None and storing.stopped_by.reason == STOP_LEASE_LOST:
                    return "lease lost before its trainer started; nothing is stored by this process"
                if storing.stopped_by is not None:
                    persist(lambda: lifecycle.finish(run.id, CANCELLED, lease=run.lease,
                                                     error_message=CANCELLED_BY_USER))
                    return "cancelled before its trainer started"
                reason = str(exc) if isinstance(exc, base_model.BaseModelRefused) else \
                    f"could not fetch its base model {base.ref}: {exc}"
                persist(lambda: lifecycle.fail(run.id, reason, lease=run.lease))
                return "failed: " + reason
            _platform_note(recorder, f"base model {base.asked} is version {base.ref} (digest {base.digest[:12]}…), "
                                     "fetched and checked")
        storing.stops_on = {STOP_LEASE_LOST}
        for refusal in restored.refused:
            _platform_note(recorder, refusal)
        if restored.step is not None:
            _platform_note(recorder, f"resumed from step {restored.step} (stored checkpoint)")
            # The page's step is where this attempt starts, not where the lost one had come to.
            recorder.update_progress(resumed_from_stored_step=restored.step, step=restored.step)
        elif run.lease.attempt > 1:
            recorder.update_progress(resumed_from_stored_step=None, step=0)
        uploader = CheckpointUploader(files, run_dir).start()
        # One lock per run on this host, beside the scratch folders: each execution has a folder of its own,
        # and two of one run (a claim a crash of Postgres undid, say) must still never train at once.
        outcome = run_tunix_subprocess(run_dir, settings, on_event=on_event, on_output=recorder.on_output,
                                       on_tick=on_tick, placement=placement or first_devices(run.devices),
                                       lock_path=settings.scratch_root / f"{run.id}.lock")
        recorder.flush()
    except Exception as exc:
        log.exception("run %s: failed inside the %s", run.id, where)
        if uploader is not None:
            storing.stop.set()
            uploader.stop()
        _end_transaction()
        reason = f"{where} error ({type(exc).__name__}: {str(exc)[:300]}); the {where} log has the details"
        persist(lambda: lifecycle.fail(run.id, reason, lease=run.lease))
        return "failed inside the " + where
    settled = _settle(run, run_dir, outcome, settings, persist, files, uploader, recorder, storing, storing_tick)
    if run.config.get("candidate_for") and settled.startswith(f"finished {COMPLETED}"):
        _guarded(lambda: gates.judge_run(db.session.get(TunixRun, run.id)), f"run {run.id}: judging its gates")
    if run.sweep_id is not None:  # the trial ended: its sweep may tell the study and queue the next
        _guarded(lambda: sweep_service.advance(run.sweep_id), f"sweep {run.sweep_id}: advancing")
    return settled


def _prepare(run: LeasedRun, scratch: Path) -> tuple[Path, base_model.RegisteredBase | None]:
    """The run's folder, written, and the registered version it trains from (its config names the folder the
    version is fetched into), read in one go."""
    base = base_model.registered_base(run.id)
    return prepare_run_directory(run, scratch, base_model.folder(scratch) if base else None), base


def _platform_note(recorder: ProgressRecorder, note: str) -> None:
    """A line of the platform's own in the run's log, among the trainer's."""
    recorder.on_output("stdout", f"platform: {note}\n".encode())
    recorder.flush()


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


def _settle(run: LeasedRun, run_dir: Path, outcome: ProcessOutcome, settings: ExecutionSettings, persist,
            files: RunStore, uploader: CheckpointUploader, recorder: ProgressRecorder, storing: _Storing,
            storing_tick: Callable[[], None]) -> str:
    """Store the run's files and what the execution came to, as long as this process still holds the run."""
    if outcome.stop_reason == STOP_LEASE_LOST:
        storing.stop.set()
        uploader.stop()
        return "lease lost; its trainer was killed and nothing is stored by this process"
    if outcome.stop_reason == STOP_SHUTDOWN:
        # The trainer saved a checkpoint as it stopped: store it (within the grace) for whoever runs it next.
        timer = threading.Timer(settings.kill_grace_seconds, storing.stop.set)
        timer.start()
        uploader.stop()
        uploader.store_finished(StoringProgress())
        timer.cancel()
        handed = persist(lambda: queue_store.hand_back(
            run.id, run.lease, f"handed back by worker {run.lease.holder} on shutdown"))
        return "handed back to the queue (pending again, attempt not counted)" + (
            "" if handed else ": refused, it had moved on")
    result = parse_execution_result(outcome, settings)
    if (run_dir / PREDICTIONS_FILE).is_file():
        # Before the outcome: a run that reads completed already has its predictions to show.
        persist(lambda: run_evaluation.store_predictions(run.id, run_dir / PREDICTIONS_FILE))
    persist(lambda: _write_log(run.id, run_dir))
    _end_transaction()
    try:
        while_ticking(lambda: files_at_end(uploader, files, run_dir, storing.progress), storing_tick, storing.stop)
    except StoreError as exc:
        if storing.stopped_by is None and result.status == COMPLETED:
            # Never completed with files missing: the run fails, and says the store is why.
            result = replace(result, status=FAILED, error_message=f"could not store the run's files: {exc}")
        elif storing.stopped_by is None:
            _platform_note(recorder, f"its files could not all be stored: {exc}")
    recorder.flush()
    if storing.stopped_by is not None:
        return "lease lost while storing its files; nothing more is stored by this process"
    stored = persist(lambda: lifecycle.finish(
        run.id, result.status, lease=run.lease, exit_code=result.exit_code, error_message=result.error_message,
        stdout=result.stdout, stderr=result.stderr, result=result.summary))
    return f"finished {result.status} (exit code {result.exit_code})" + (
        "" if stored else "; not stored: the run had moved on")


def _write_log(run_id, run_dir: Path) -> None:
    """The run's log, as its page shows it, written into its folder to be stored with its files."""
    with (run_dir / RUN_LOG_FILE).open("w", encoding="utf-8") as out:
        for text in logs.full_text(run_id):
            out.write(text)
