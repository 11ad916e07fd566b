"""The run state machine: statuses, modes and the transitions allowed between them."""
from __future__ import annotations

PENDING = "pending"
RUNNING = "running"
CANCELLING = "cancelling"
COMPLETED = "completed"
FAILED = "failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"

STATUSES = (PENDING, RUNNING, CANCELLING, COMPLETED, FAILED, TIMEOUT, CANCELLED)
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, TIMEOUT, CANCELLED})
# A run in one of these is not over: queued, or holding a worker (or a request).
ACTIVE_STATUSES = frozenset({PENDING, RUNNING, CANCELLING})
# A run in one of these has a live execution that holds its lease.
LEASED_STATUSES = (RUNNING, CANCELLING)

SYNC = "sync"  # carried out inside the request; the response carries the result
ASYNC = "async"  # queued; a worker claims it
DRY_RUN = "dry_run"  # validated and planned inside the request; nothing is trained
MODES = (SYNC, ASYNC, DRY_RUN)
DEFAULT_MODE = SYNC
# How the form offers each mode, in the order it lists them.
MODE_CHOICES = ((ASYNC, "queue it for a worker"), (SYNC, "run it now, in this request"),
                (DRY_RUN, "validate and plan only"))
# Only a queued run is re-queued when its worker is lost; a request's run gets one start.
REQUEUEABLE_MODES = frozenset({ASYNC})
# The reason stored on a run the user cancelled.
CANCELLED_BY_USER = "cancelled by user"
# A user may cancel a run in one of these; a cancelling run is already on its way out.
CANCELLABLE_STATUSES = frozenset({PENDING, RUNNING})

# A run enters at PENDING (async) or RUNNING (sync and dry_run, which execute in the
# request). RUNNING -> PENDING is recovery of a lost worker's run, or a worker handing
# its run back on shutdown. A CANCELLING run may still end on its own before the stop
# lands. Terminal states have no way out.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({PENDING, CANCELLING, COMPLETED, FAILED, TIMEOUT, CANCELLED}),
    CANCELLING: frozenset({CANCELLED, COMPLETED, FAILED, TIMEOUT}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    TIMEOUT: frozenset(),
    CANCELLED: frozenset(),
}


def is_terminal(status: str) -> bool:
    """True once a run can no longer change."""
    return status in TERMINAL_STATUSES


def can_transition(from_status: str, to_status: str) -> bool:
    """True when the state machine allows moving from one status to the other."""
    return to_status in ALLOWED_TRANSITIONS.get(from_status, frozenset())
