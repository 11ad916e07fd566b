"""A generation request's moves once a worker holds it: each a compare-and-set on (status, holder,
attempt), so a worker that lost its lease to recovery changes nothing."""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, cast, func, literal, update
from sqlalchemy.dialects.postgresql import JSONB

from app.contract.generation import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING
from app.extensions import db
from app.models import GenerationRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldRequest:
    """A request as the worker that claimed it sees it."""

    id: uuid.UUID
    worker_id: str
    attempt: int
    model_key: str
    spec: dict[str, Any]
    prompts: list[str]
    settings: dict[str, Any]


def _held(request: HeldRequest):
    return (GenerationRequest.id == request.id, GenerationRequest.worker_id == request.worker_id,
            GenerationRequest.attempt == request.attempt, GenerationRequest.status == RUNNING)


def _write(request: HeldRequest, **values: Any) -> bool:
    done = db.session.execute(update(GenerationRequest).where(*_held(request)).values(**values)
                              .returning(GenerationRequest.id)).first() is not None
    db.session.commit()
    return done


def loaded(request: HeldRequest, cold: bool, seconds: float | None) -> bool:
    """The model is in the server's memory: generating now."""
    return _write(request, phase="generating", cold=cold, load_seconds=seconds)


def answered(request: HeldRequest, answer: dict[str, Any]) -> bool:
    """One more answer, shown as soon as it is stored."""
    appended = GenerationRequest.answers.op("||")(cast(literal(json.dumps([answer]), String), JSONB))
    return _write(request, answers=appended, heartbeat_at=func.clock_timestamp())


def finish(request: HeldRequest, status: str, error_message: str | None = None) -> bool:
    """running -> completed, failed or cancelled."""
    if status not in (COMPLETED, FAILED, CANCELLED):
        raise ValueError(f"{status} is not an end")
    done = _write(request, status=status, phase=None, error_message=error_message,
                  finished_at=func.clock_timestamp())
    log.info("generation %s: running -> %s%s", request.id, status, "" if done else " refused (lease lost)")
    return done


def heartbeat(request: HeldRequest) -> tuple[bool, bool]:
    """(still held, cancel asked): renews the lease of a request in progress."""
    row = db.session.execute(update(GenerationRequest).where(*_held(request))
                             .values(heartbeat_at=func.clock_timestamp())
                             .returning(GenerationRequest.cancel_requested_at)).first()
    db.session.commit()
    return row is not None, bool(row and row.cancel_requested_at)


def hand_back(request: HeldRequest, reason: str) -> bool:
    """running -> pending, the attempt not counted (a worker stopping, or a device taken for training)."""
    return _write(request, status=PENDING, worker_id=None, heartbeat_at=None, phase=None, answers=[],
                  attempt=GenerationRequest.attempt - 1, error_message=reason)
