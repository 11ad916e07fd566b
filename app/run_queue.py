"""The queue: claiming the next pending run. The only module that knows about SKIP LOCKED."""
from __future__ import annotations

from sqlalchemy import func, text

from app import run_service
from app.extensions import db
from app.models import TunixRun
from app.run_states import PENDING, RUNNING

# Walks ix_tunix_runs_pending_queue; rows another worker has locked are skipped, not waited on.
_NEXT_PENDING = text("""
    SELECT id FROM tunix_runs
    WHERE status = 'pending'
    ORDER BY queued_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
""")


def claim_next_run(worker_id: str) -> TunixRun | None:
    """Claim the oldest pending run for this worker and mark it running, in one short transaction."""
    run_id = db.session.execute(_NEXT_PENDING).scalar()
    if run_id is None:
        db.session.rollback()
        return None
    # Still in the SELECT's transaction: the row lock holds until transition() commits.
    if not run_service.transition(run_id, PENDING, RUNNING, worker_id=worker_id, started_at=func.now(),
                                  heartbeat_at=func.now(), attempt=TunixRun.attempt + 1, cancel_requested_at=None):
        return None
    return db.session.get(TunixRun, run_id)
