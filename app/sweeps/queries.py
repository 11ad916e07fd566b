"""Reading sweeps and their trials."""
from __future__ import annotations

import uuid

from sqlalchemy import func, select

from app.extensions import db
from app.models import Sweep, SweepTrial


def get_sweep(sweep_id: str) -> Sweep | None:
    """The sweep with this id, or None for an unknown or malformed id."""
    try:
        parsed = uuid.UUID(str(sweep_id))
    except ValueError:
        return None
    return db.session.get(Sweep, parsed)


def list_sweeps(limit: int = 50, offset: int = 0) -> list[Sweep]:
    """Sweeps, newest first."""
    return list(db.session.scalars(select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id.desc())
                                   .offset(offset).limit(limit)))


def trials(sweep_id: uuid.UUID) -> list[SweepTrial]:
    """A sweep's trials in the order they were asked for, each with its run."""
    return list(db.session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id)
                                   .order_by(SweepTrial.number)))


def trial_of_run(run_id: uuid.UUID) -> SweepTrial | None:
    """The trial a run carries out, if it is one."""
    return db.session.scalar(select(SweepTrial).where(SweepTrial.run_id == run_id))


def counts() -> dict[str, dict[str, int]]:
    """Sweeps by status and trials by state, for /metrics (the read ends its own transaction)."""
    sweeps = dict(db.session.execute(select(Sweep.status, func.count()).group_by(Sweep.status)).all())
    trials = dict(db.session.execute(select(SweepTrial.state, func.count()).group_by(SweepTrial.state)).all())
    db.session.rollback()
    return {"sweeps": sweeps, "trials": trials}
