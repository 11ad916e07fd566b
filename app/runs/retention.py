"""Retention of stored checkpoints: a finished run keeps its last one; older steps go after a while."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import select

from app.artifacts.run_store import run_store
from app.artifacts.store import StoreError, StoreSettings
from app.extensions import db
from app.models import TunixRun
from app.run_states import TERMINAL_STATUSES
from app.runs import artifacts


@dataclass
class Collected:
    """What a collection found and freed."""

    runs_examined: int = 0
    checkpoints_deleted: int = 0
    bytes_freed: int = 0
    failures: list[str] = field(default_factory=list)


def collect(config: Mapping[str, Any], older_than_days: float | None = None, dry_run: bool = False) -> Collected:
    """Delete every stored checkpoint step but the last of each run that finished more than `older_than_days`
    ago (the setting by default). Runs still pending or running are never looked at; a run's model,
    adapter and results are never deleted."""
    days = float(config["ARTIFACTS_CHECKPOINT_RETENTION_DAYS"] if older_than_days is None else older_than_days)
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    settings = StoreSettings.from_config(config)
    settings = replace(settings, retry_seconds=min(settings.retry_seconds, 30.0))
    report = Collected()
    rows = db.session.execute(select(TunixRun.id, TunixRun.artifacts_url).where(
        TunixRun.status.in_(TERMINAL_STATUSES), TunixRun.completed_at < cutoff).order_by(TunixRun.completed_at)).all()
    db.session.rollback()  # no transaction stays open while the store is walked
    for run_id, location in rows:
        report.runs_examined += 1
        files = run_store(settings, location, run_id)
        try:
            steps = artifacts.group(files.files()).checkpoints
            for checkpoint in steps[:-1]:
                report.bytes_freed += checkpoint.size_bytes if dry_run else files.delete_checkpoint(checkpoint.step)
                report.checkpoints_deleted += 1
        except StoreError as exc:
            report.failures.append(f"run {run_id}: {exc}")
    return report
