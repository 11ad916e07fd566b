"""Carrying out sync and dry_run runs inside the request that submitted (or retried) them."""
from __future__ import annotations

import logging

from flask import current_app

from app.accounts.service import Actor
from app.execution.runner import execute_leased_run
from app.execution.tunix_execution import ExecutionSettings
from app.models import TunixRun
from app.queue import registry
from app.runs import lifecycle, service
from app.runs.lifecycle import LeasedRun
from app.run_states import ASYNC, DRY_RUN, SYNC

log = logging.getLogger(__name__)


def carry_out_in_request(run: TunixRun) -> TunixRun:
    """Execute a freshly created sync or dry_run run to its end, then return it reloaded.

    The request holds the run's lease like a worker would: it heartbeats, so the run is
    not taken for lost, and it notices a cancel from another request.
    """
    if run.mode == SYNC:
        outcome = execute_leased_run(LeasedRun.of(run), ExecutionSettings.from_config(current_app.config))
        log.info("run %s: %s", run.id, outcome)
    elif run.mode == DRY_RUN:
        try:
            service.plan_dry_run(run, registry.live_devices(current_app.config["LEASE_TIMEOUT_SECONDS"]))
        except Exception as exc:  # the run must not be left "running" by a bug or an I/O error
            log.exception("run %s: unexpected error while planning it", run.id)
            service.rollback()
            lifecycle.fail(run.id, f"server error ({type(exc).__name__}); the server log has the details")
    return service.refresh(run)


def submit_and_carry_out(raw: dict, mode: str, actor: Actor,
                         idempotency_key: str | None = None) -> tuple[TunixRun, bool]:
    """Submit a run for `actor`; a new sync or dry_run run is carried out before this returns. (run, created)."""
    run, created = service.submit_run(raw, mode, idempotency_key, created_by=actor.user_id)
    if created and mode != ASYNC:
        run = carry_out_in_request(run)
    return run, created


def retry_and_carry_out(run: TunixRun, actor: Actor) -> TunixRun:
    """Retry a finished run; a dry run's retry is planned before this returns."""
    new_run = service.retry_run(run, actor)
    if new_run.mode == DRY_RUN:
        new_run = carry_out_in_request(new_run)
    return new_run
