"""Carrying out sync and dry_run runs inside the request that submitted them."""
from __future__ import annotations

import logging

from flask import current_app

from app import run_service
from app.models import TunixRun
from app.run_lease import RunLease
from app.run_recorder import ProgressRecorder
from app.run_states import FAILED, LEASED_STATUSES
from app.tunix_execution import ExecutionSettings, execute_tunix_run_sync

log = logging.getLogger(__name__)


def carry_out_in_request(run: TunixRun) -> TunixRun:
    """Execute a freshly created sync or dry_run run to its end, then return it reloaded."""
    try:
        if run.mode == "dry_run":
            run_service.plan_dry_run(run)
        elif run.mode == "sync":
            _execute_sync(run)
    except Exception as exc:  # the run must not be left "running" by a bug or an I/O error
        log.exception("run %s: unexpected error while carrying it out", run.id)
        run_service.rollback()
        run_service.transition(run.id, LEASED_STATUSES, FAILED, error_message=f"internal error ({type(exc).__name__}); "
                                                                  "the server log has the details")
    return run_service.refresh(run)


def _execute_sync(run: TunixRun) -> None:
    # The request holds the run's lease like a worker would: it heartbeats, so the run is
    # not taken for lost, and it notices a cancel from another request.
    config = current_app.config
    settings = ExecutionSettings.from_config(config)
    run_dir = run_service.prepare_run_directory(run, settings.artifacts_root)
    recorder = ProgressRecorder(run.id, log_max_bytes=config["LOG_MAX_BYTES"])
    lease = RunLease(run.id, run.worker_id, run.attempt, config["HEARTBEAT_SECONDS"], settings.kill_grace_seconds)

    def on_tick():
        recorder.on_tick()
        return lease.tick()

    result = execute_tunix_run_sync(run_dir, settings, on_event=recorder.on_event, on_output=recorder.on_output,
                                    on_tick=on_tick)
    recorder.flush()
    # After a lost lease the compare-and-set refuses this write: the recovering side owns the run.
    run_service.finish_run(run, result, held_by=run.worker_id, attempt=run.attempt)
