"""The run state machine: statuses, modes and the transitions allowed between them."""
from __future__ import annotations

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"

STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED)
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, TIMEOUT, CANCELLED})

MODES = ("sync", "async", "dry_run")
DEFAULT_MODE = "sync"

# A run enters at PENDING (async) or RUNNING (sync and dry_run, which execute
# in the request). Terminal states have no way out.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({COMPLETED, FAILED, TIMEOUT, CANCELLED}),
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
