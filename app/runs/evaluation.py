"""A run's evaluation as the platform keeps it: score columns, stored predictions, comparisons, leaderboards.

The trainer scores (app/trainer/evaluation.py); this module copies what it found into columns
when the run ends, keeps its predictions in the database so any web host can show them, and
answers the questions asked across runs.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import load_only
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app.extensions import db
from app.models import RunPrediction, TunixRun
from app.run_states import COMPLETED

PHASES = ("before", "after")
STORED_TEXT_CHARS = 4000  # per prompt, reference or prediction; the file in the run directory keeps it whole
MAX_STORED_PREDICTIONS = 2 * 10_000  # both passes at the largest eval_max_examples
INSERT_BATCH = 500
METRICS = ("answer_match", "exact_match", "mean_generated_tokens", "generation_tokens_per_second")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def of(result: Any) -> dict[str, Any] | None:
    """The evaluation block of a run's result, when it holds one."""
    if not isinstance(result, dict) or not isinstance(result.get("evaluation"), dict):
        return None
    return result["evaluation"]


def score_columns(result: Any) -> dict[str, Any]:
    """The columns a finished run's result fills: losses, and its scores after training when it has them."""
    if not isinstance(result, dict):
        return {}
    columns = {"final_loss": _number(result.get("final_loss")),
               "final_eval_loss": _number(result.get("final_eval_loss"))}
    evaluation = of(result)
    after = evaluation.get("after") if evaluation else None
    if isinstance(after, dict) and _number(after.get("answer_match")) is not None:
        columns.update(evaluated_on=str(evaluation.get("dataset_key") or "")[:80] or None,
                       answer_match=_number(after.get("answer_match")),
                       exact_match=_number(after.get("exact_match")))
    return columns


def _clip(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:STORED_TEXT_CHARS].replace("\x00", "\ufffd")


def store_predictions(run_id: uuid.UUID, path: Path) -> int:
    """Replace the run's stored predictions with those of its predictions.jsonl; how many were stored.

    Lines that are not a prediction are skipped: the file is the trainer's, and a damaged line
    must not keep a finished run from being recorded.
    """
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if len(rows) >= MAX_STORED_PREDICTIONS:
                    break
                try:
                    item = json.loads(line)
                    phase, position = item["phase"], int(item["index"])
                except (ValueError, KeyError, TypeError):
                    continue
                if phase not in PHASES or position < 0:
                    continue
                rows[(phase, position)] = {
                    "run_id": run_id, "phase": phase, "position": position,
                    "prompt": _clip(item.get("prompt", "")), "reference": _clip(item.get("reference", "")),
                    "prediction": _clip(item.get("prediction", "")),
                    "exact_match": item.get("exact_match") is True, "answer_match": item.get("answer_match") is True,
                    "generated_tokens": max(0, int(_number(item.get("generated_tokens")) or 0))}
    db.session.execute(delete(RunPrediction).where(RunPrediction.run_id == run_id))
    values = list(rows.values())
    for first in range(0, len(values), INSERT_BATCH):
        db.session.execute(pg_insert(RunPrediction).values(values[first:first + INSERT_BATCH]))
    db.session.commit()
    return len(values)


@dataclass
class PredictionPage:
    items: list[RunPrediction]
    total: int


def predictions(run_id: uuid.UUID, phase: str = "after", offset: int = 0, limit: int = 20) -> PredictionPage:
    """One page of a pass's predictions, in eval-set order."""
    where = (RunPrediction.run_id == run_id, RunPrediction.phase == phase)
    items = list(db.session.scalars(select(RunPrediction).where(*where).order_by(RunPrediction.position)
                                    .offset(offset).limit(limit)))
    total = db.session.scalar(select(func.count()).select_from(RunPrediction).where(*where))
    return PredictionPage(items, int(total or 0))


def before_verdicts(run_id: uuid.UUID, positions: list[int]) -> dict[int, RunPrediction]:
    """The before-training predictions at these positions, to show beside the after ones."""
    if not positions:
        return {}
    return {p.position: p for p in db.session.scalars(select(RunPrediction).where(
        RunPrediction.run_id == run_id, RunPrediction.phase == "before", RunPrediction.position.in_(positions)))}


def leaderboard(dataset_key: str, limit: int = 50, offset: int = 0) -> list[TunixRun]:
    """Completed runs scored on this dataset: best answer_match first, then exact_match, then final eval loss."""
    return list(db.session.scalars(leaderboard_query(dataset_key, limit, offset)))


def leaderboard_query(dataset_key: str, limit: int, offset: int):
    """The leaderboard's SELECT. Its order is the leaderboard index's own, so Postgres reads the first
    rows of the index and stops: no scan of other datasets, no sort."""
    return (select(TunixRun)
            # What a leaderboard line shows; the outputs and the result stay unread.
            .options(load_only(TunixRun.id, TunixRun.name, TunixRun.status, TunixRun.mode, TunixRun.dataset_key,
                               TunixRun.model_id, TunixRun.config, TunixRun.completed_at, TunixRun.created_by,
                               TunixRun.evaluated_on, TunixRun.final_loss, TunixRun.final_eval_loss,
                               TunixRun.answer_match, TunixRun.exact_match))
            .where(TunixRun.evaluated_on == dataset_key, TunixRun.status == COMPLETED,
                   TunixRun.answer_match.is_not(None))
            .order_by(TunixRun.answer_match.desc().nulls_last(), TunixRun.exact_match.desc().nulls_last(),
                      TunixRun.final_eval_loss.asc().nulls_last(), TunixRun.id)
            .offset(offset).limit(limit))
