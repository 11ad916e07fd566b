"""Keeping one execution's claim on its run alive, and telling it when it must stop."""
from __future__ import annotations

import logging
import time
import uuid

from sqlalchemy.exc import InterfaceError, OperationalError

from app.execution.tunix_execution import STOP_CANCEL, STOP_LEASE_LOST, StopRequest
from app.extensions import db
from app.queue import store as queue_store
from app.runs.lifecycle import Lease
from app.run_states import CANCELLING

log = logging.getLogger(__name__)


class RunLease:
    """Renews the run's heartbeat every `heartbeat_seconds` while the trainer runs.

    `tick()` returns a StopRequest when the run was cancelled (stop with the grace period
    so the trainer can checkpoint) or when the lease was lost to a recovering worker
    (stop at once: someone else owns the run now). A database outage only skips
    renewals; if it outlasts the lease, the first renewal after it finds the lease lost.
    """

    def __init__(self, run_id: uuid.UUID, lease: Lease, heartbeat_seconds: float, kill_grace_seconds: float):
        self.run_id, self.lease = run_id, lease
        self.heartbeat_seconds, self.kill_grace_seconds = heartbeat_seconds, kill_grace_seconds
        self._next_renewal = time.monotonic() + heartbeat_seconds

    def check_now(self) -> None:
        """Renew at the next tick (e.g. a cancel notification arrived)."""
        self._next_renewal = 0.0

    def tick(self) -> StopRequest | None:
        """Renew when due; a StopRequest when the run must stop (cancelled, or the lease lost)."""
        if time.monotonic() < self._next_renewal:
            return None
        self._next_renewal = time.monotonic() + self.heartbeat_seconds
        try:
            status = queue_store.renew_lease(self.run_id, self.lease)
        except (OperationalError, InterfaceError) as exc:
            db.session.rollback()
            log.warning("run %s: heartbeat failed (%s); the trainer keeps running", self.run_id,
                        type(exc).__name__)
            return None
        if status is None:
            log.error("run %s: lease lost (another worker recovered it); stopping this execution", self.run_id)
            return StopRequest(STOP_LEASE_LOST, grace_seconds=1.0)
        if status == CANCELLING:
            return StopRequest(STOP_CANCEL, grace_seconds=self.kill_grace_seconds)
        return None
