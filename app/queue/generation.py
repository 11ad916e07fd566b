"""The playground's queue: claiming generation requests, recovering those whose worker went quiet, and
the one comparison that decides whether a free device trains or answers.

The policy (README, "The playground"): a request that has waited longer than `prefer_seconds` is taken
strictly oldest first; among younger ones, a request for a model the worker holds loaded goes first,
then the oldest. A free device answers the playground before it trains, unless a run that fits the
worker has waited longer than `passover_seconds` and longer than every waiting request: then it trains.
"""
from __future__ import annotations

import uuid

from sqlalchemy import text

from app import instruments
from app.contract.generation import CANCELLED, FAILED, PENDING, RUNNING
from app.extensions import db
from app.playground.lifecycle import HeldRequest

_CLAIM = text(f"""
UPDATE generation_requests SET status = '{RUNNING}', worker_id = :worker, attempt = attempt + 1,
       heartbeat_at = clock_timestamp(), started_at = clock_timestamp(), phase = 'loading', answers = '[]',
       error_message = NULL
WHERE id = (
    SELECT id FROM generation_requests
    WHERE status = '{PENDING}'
    ORDER BY created_at < clock_timestamp() - make_interval(secs => :prefer) DESC,
             model_key = ANY(CAST(:held AS text[])) DESC, created_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING id, worker_id, attempt, model_key, spec, prompts, settings
""")

_TRAINING_FIRST = text(f"""
SELECT EXISTS (
    SELECT 1 FROM tunix_runs AS run
    WHERE run.status = 'pending' AND run.devices <= :capacity
      AND run.queued_at < clock_timestamp() - make_interval(secs => :passover)
      AND NOT EXISTS (SELECT 1 FROM generation_requests AS ask
                      WHERE ask.status = '{PENDING}' AND ask.created_at <= run.queued_at))
""")

_OLDEST_EXPIRED = text(f"""
SELECT id, worker_id, attempt, max_attempts, cancel_requested_at,
       extract(epoch FROM clock_timestamp() - heartbeat_at) AS silent_for
FROM generation_requests
WHERE status = '{RUNNING}' AND heartbeat_at < clock_timestamp() - make_interval(secs => :lease)
ORDER BY heartbeat_at LIMIT 1
FOR UPDATE SKIP LOCKED
""")

_RECOVER = text("""
UPDATE generation_requests
SET status = :status, worker_id = CASE WHEN :status = 'pending' THEN NULL ELSE worker_id END,
    heartbeat_at = NULL, phase = NULL, error_message = :message,
    answers = CASE WHEN :status = 'pending' THEN '[]'::jsonb ELSE answers END,
    finished_at = CASE WHEN :status = 'pending' THEN NULL ELSE clock_timestamp() END
WHERE id = :id AND status = 'running' AND worker_id = :worker AND attempt = :attempt
""")


def claim_next(worker_id: str, held: list[str], prefer_seconds: float) -> HeldRequest | None:
    """Take the request the policy picks and mark it running for this worker, in one statement."""
    with instruments.timed_db_write("generation_claim"):
        row = db.session.execute(_CLAIM, {"worker": worker_id, "held": list(held),
                                          "prefer": float(prefer_seconds)}).first()
        db.session.commit()
    if row is None:
        return None
    return HeldRequest(row.id, row.worker_id, row.attempt, row.model_key, dict(row.spec), list(row.prompts),
                       dict(row.settings))


def training_goes_first(capacity: int, passover_seconds: float) -> bool:
    """True when a run that fits this worker has waited past the passover and longer than every request."""
    first = bool(db.session.execute(_TRAINING_FIRST, {"capacity": capacity,
                                                      "passover": float(passover_seconds)}).scalar())
    db.session.rollback()
    return first


def recover_one_expired(lease_timeout_seconds: float) -> tuple[uuid.UUID, str] | None:
    """A running request whose worker went quiet: asked again while it has attempts left, else failed with
    why; cancelled when its cancel was asked. None when there is none."""
    row = db.session.execute(_OLDEST_EXPIRED, {"lease": lease_timeout_seconds}).first()
    if row is None:
        db.session.rollback()
        return None
    silence = f"no heartbeat from {row.worker_id} for {row.silent_for:.0f} s"
    if row.cancel_requested_at is not None:
        status, message = CANCELLED, f"cancelled; its worker was lost ({silence})"
    elif row.attempt < row.max_attempts:
        status, message = PENDING, f"asked again: its worker was lost ({silence}); attempt {row.attempt} of " \
                                   f"{row.max_attempts} used"
    else:
        status, message = FAILED, f"worker lost while answering ({silence}), on each of its {row.max_attempts} " \
                                  "attempts: ask again"
    done = db.session.execute(_RECOVER, {"status": status, "message": message, "id": row.id,
                                         "worker": row.worker_id, "attempt": row.attempt}).rowcount
    db.session.commit()
    return (row.id, status) if done else None
