"""What a run's stored progress says: the phase the trainer is in, and an honest time left.

The time left counts what is still to come: the steps left at the steady pace of recent steps (the
compiling first step left out), then the scoring pass after training at the pace of the pass before
it. During the phases nothing foretells (loading, the first scoring pass, storing files) it is None,
and the page names the phase instead of printing a number it cannot stand behind.
"""
from __future__ import annotations

import math
from typing import Any

from app.contract.progress_protocol import LOADING, SCORING_AFTER, SCORING_BEFORE, STORING, TRAINING, finite

PHASE_WORDS = {
    LOADING: "Starting: loading the model",
    SCORING_BEFORE: "Scoring the model before training",
    TRAINING: "Training",
    SCORING_AFTER: "Scoring the model after training",
    STORING: "Storing files: exporting the model and writing the results",
}


def phase_of(progress: dict[str, Any]) -> str:
    """The trainer's phase; a run recorded before phases were reported is training once it has a step."""
    phase = progress.get("phase")
    if phase in PHASE_WORDS:
        return phase
    return TRAINING if progress.get("step") else LOADING


def scoring_after_seconds(progress: dict[str, Any]) -> float | None:
    """Seconds the scoring pass after training still needs, foreseen from the pass before it; None when
    there is no such pass or nothing to foresee it with."""
    before = progress.get("evaluation_before")
    if not isinstance(before, dict):
        return None
    batch_seconds, batch_size, total = (finite(before.get(k)) for k in ("batch_seconds", "batch_size", "examples"))
    if batch_seconds is None or not batch_size or not total:
        return None
    evaluating = progress.get("evaluating") if isinstance(progress.get("evaluating"), dict) else {}
    done = finite(evaluating.get("done")) if evaluating.get("phase") == "after" else 0.0
    return math.ceil(max(0.0, total - (done or 0.0)) / batch_size) * batch_seconds


def time_left_seconds(status: str, progress: dict[str, Any]) -> float | None:
    """Seconds until a running run's trainer is done, or None when it cannot be said honestly."""
    if status != "running":
        return None
    phase = phase_of(progress)
    if phase == SCORING_AFTER:
        return scoring_after_seconds(progress)
    if phase != TRAINING:
        return None
    pace, step, total = (finite(progress.get(k)) for k in ("seconds_per_step", "step", "total_steps"))
    if pace is None or not total or step is None:
        return None
    scoring = scoring_after_seconds(progress) if isinstance(progress.get("evaluation_before"), dict) else 0.0
    return None if scoring is None else pace * max(0.0, total - step) + scoring
