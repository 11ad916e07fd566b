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
# A run in one of these has a live execution that holds its lease.
LEASED_STATUSES = (RUNNING, CANCELLING)

MODES = ("sync", "async", "dry_run")
DEFAULT_MODE = "sync"

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
