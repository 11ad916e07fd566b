"""Every query the queue runs: claiming, lease renewal, hand-back and recovery of runs.

The only module that issues SELECT ... FOR UPDATE SKIP LOCKED (a test enforces it).
Status changes go through the named moves of `app.runs.lifecycle`.
"""
from __future__ import annotations

import uuid

from sqlalchemy import text, update

from app import instruments
from app.extensions import db
from app.models import TunixRun
from app.runs import lifecycle
from app.runs.lifecycle import Lease, LeasedRun
from app.run_states import (CANCELLED, CANCELLED_BY_USER, CANCELLING, FAILED, LEASED_STATUSES, PENDING,
                             REQUEUEABLE_MODES)

# The placement policy, in one statement. The oldest pending run that fits this worker's free devices,
# walking ix_tunix_runs_pending_queue; rows another worker has locked are skipped, not waited on. A run
# that fits the worker's capacity but not its free devices may be passed over by younger, smaller runs
# for `passover` seconds after it was queued; after that this worker claims nothing younger than it, so
# its devices drain and it starts once the runs already running on them end.
_NEXT_FITTING_ID = f"""
SELECT id FROM tunix_runs AS candidate
WHERE status = '{PENDING}' AND devices <= %(free)s
  AND NOT EXISTS (
    SELECT 1 FROM tunix_runs AS starved
    WHERE starved.status = '{PENDING}' AND starved.devices > %(free)s AND starved.devices <= %(capacity)s
      AND starved.queued_at < clock_timestamp() - make_interval(secs => %(passover)s)
      AND (starved.queued_at, starved.id) < (candidate.queued_at, candidate.id))
ORDER BY queued_at, id LIMIT 1
FOR UPDATE SKIP LOCKED"""

# Walks ix_tunix_runs_leased_heartbeat; two sweeping workers never take the same run.
_OLDEST_EXPIRED_LEASE = text("""
    SELECT id, status, mode, worker_id, attempt, max_attempts,
           extract(epoch FROM clock_timestamp() - heartbeat_at) AS silent_for
    FROM tunix_runs
    WHERE status IN ('running', 'cancelling') AND heartbeat_at < clock_timestamp() - make_interval(secs => :lease)
    ORDER BY heartbeat_at LIMIT 1
    FOR UPDATE SKIP LOCKED
""")


def claim_next_run(worker_id: str, free_ids: list[int] | None = None, capacity: int | None = None,
                   passover_seconds: float = 0.0) -> LeasedRun | None:
    """Claim the oldest pending run that fits this worker's free devices, placed on them, and mark it running,
    in one short transaction. Without `free_ids` the worker has one device, free."""
    free_ids = [0] if free_ids is None else list(free_ids)
    if not free_ids:
        return None
    # One statement: UPDATE ... WHERE id = (the run the policy picks, locked, SKIP LOCKED) RETURNING what the
    # execution needs, timed (as "claim") with its commit.
    return lifecycle.claim(_NEXT_FITTING_ID, worker_id, free_ids, free=len(free_ids),
                           capacity=len(free_ids) if capacity is None else capacity, passover=float(passover_seconds))


def renew_lease(run_id: uuid.UUID, lease: Lease) -> str | None:
    """Refresh the heartbeat of a run this holder has; its status, or None when the lease is lost."""
    stmt = (update(TunixRun)
            .where(TunixRun.id == run_id, TunixRun.worker_id == lease.holder, TunixRun.attempt == lease.attempt,
                   TunixRun.status.in_(LEASED_STATUSES))
            .values(heartbeat_at=lifecycle.event_time()).returning(TunixRun.status))
    with instruments.timed_db_write("heartbeat"):
        status = db.session.execute(stmt).scalar()
        db.session.commit()
    return status


def hand_back(run_id: uuid.UUID, lease: Lease, reason: str) -> bool:
    """Return a claimed run to the queue without counting the attempt (a worker shutting down)."""
    if lifecycle.requeue(run_id, lease, reason, recovered=False):
        return True
    # Asked to cancel meanwhile: the user's wish is the outcome.
    return lifecycle.confirm_cancel(run_id, lease)


def recover_one_expired_lease(lease_timeout_seconds: float) -> tuple[uuid.UUID, str] | None:
    """Recover one leased run whose heartbeat is older than the lease; None when there is none.

    It goes back to pending while it has attempts left, else to failed ("worker lost");
    a run that was being cancelled becomes cancelled. The compare-and-set on (status,
    holder, attempt) means a worker that heartbeats in time keeps its run.
    """
    row = db.session.execute(_OLDEST_EXPIRED_LEASE, {"lease": lease_timeout_seconds}).first()
    if row is None:
        db.session.rollback()
        return None
    silence = f"no heartbeat from {row.worker_id} for {row.silent_for:.0f} s"
    lease = Lease(row.worker_id, row.attempt)
    if row.status == CANCELLING:
        target = CANCELLED
        done = lifecycle.confirm_cancel(row.id, lease, f"{CANCELLED_BY_USER}; worker lost ({silence})")
    elif row.mode in REQUEUEABLE_MODES and row.attempt < row.max_attempts:
        target = PENDING
        done = lifecycle.requeue(row.id, lease, f"re-queued: worker lost ({silence}); "
                                                f"attempt {row.attempt} of {row.max_attempts} used", recovered=True)
    else:
        target = FAILED
        done = lifecycle.fail(row.id, f"worker lost ({silence})", lease=lease, recovered=True)
    return (row.id, target) if done else None
