"""Carrying out sync and dry_run runs inside the request that submitted them."""
from __future__ import annotations

import logging

from flask import current_app

from app import run_service
from app.models import TunixRun
from app.run_states import FAILED, RUNNING
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
        run_service.transition(run.id, RUNNING, FAILED, error_message=f"internal error ({type(exc).__name__}); "
                                                                  "the server log has the details")
    return run_service.refresh(run)


def _execute_sync(run: TunixRun) -> None:
    settings = ExecutionSettings.from_config(current_app.config)
    run_dir = run_service.prepare_run_directory(run, settings.artifacts_root)
    recorder = run_service.ProgressRecorder(run.id)
    result = execute_tunix_run_sync(run_dir, settings, on_event=recorder.on_event, on_tick=recorder.on_tick)
    recorder.flush()
    run_service.finish_run(run, result, held_by=run.worker_id)
