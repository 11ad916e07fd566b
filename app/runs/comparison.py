"""Runs side by side: which config values differ, and each metric with the best run marked."""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from app.errors import ValidationError
from app.models import TunixRun
from app.runs import evaluation, queries

MIN_RUNS, MAX_RUNS = 2, 8
IGNORED_CONFIG = frozenset({"name", "tags"})  # shown as the run's label, not as a difference

# (key, label, which is better, how it is shown); values come from the result, the score columns or the run.
METRICS = (
    ("final_loss", "Final loss", "min", "loss"), ("best_loss", "Best loss", "min", "loss"),
    ("final_eval_loss", "Final eval loss", "min", "loss"), ("best_eval_loss", "Best eval loss", "min", "loss"),
    ("answer_match", "Answer match (after)", "max", "rate"), ("exact_match", "Exact match (after)", "max", "rate"),
    ("answer_match_before", "Answer match (before)", None, "rate"),
    ("tokens_per_second", "Training tokens/s", "max", "speed"), ("steps", "Steps", None, "count"),
    ("duration_seconds", "Duration", "min", "duration"),
)
DIRECTION_WORDS = {"min": "lower is better", "max": "higher is better"}


def parse_ids(values: Iterable[str]) -> list[uuid.UUID]:
    """Run ids from ?ids=a,b (or ids repeated, as a form of checkboxes sends them): 2 to 8 distinct ids."""
    raw = [part.strip() for value in values for part in value.split(",") if part.strip()]
    ids: list[uuid.UUID] = []
    for part in raw:
        try:
            parsed = uuid.UUID(part)
        except ValueError:
            raise ValidationError("invalid comparison", {"ids": f"{part[:40]!r} is not a run id"}) from None
        if parsed not in ids:
            ids.append(parsed)
    if not MIN_RUNS <= len(ids) <= MAX_RUNS:
        raise ValidationError("invalid comparison",
                              {"ids": f"select {MIN_RUNS} to {MAX_RUNS} runs to compare, not {len(ids)}"})
    return ids


@dataclass
class MetricRow:
    key: str
    label: str
    values: list[float | None]
    kind: str = "number"  # how a value is shown: loss, rate, speed, count, duration
    better: str | None = None  # "min" or "max": the direction the best value is marked by
    best: set[int] = field(default_factory=set)  # indexes of the runs holding the best value
    examples: list[int | None] = field(default_factory=list)  # answers a rate was measured on, per run

    @property
    def direction(self) -> str | None:
        return DIRECTION_WORDS.get(self.better or "")


@dataclass
class Comparison:
    runs: list[TunixRun]
    series: list[dict[str, list[dict[str, Any]]]]
    config_differences: list[tuple[str, list[Any]]]
    metrics: list[MetricRow]
    warnings: list[str] = field(default_factory=list)  # why the runs may not be comparable


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _metric(run: TunixRun, key: str) -> float | None:
    result = run.result if isinstance(run.result, dict) and not run.is_plan else {}
    if key in ("answer_match", "exact_match"):
        return _finite(getattr(run, key))
    if key == "answer_match_before":
        before = (evaluation.of(result) or {}).get("before")
        return _finite(before.get("answer_match")) if isinstance(before, dict) else None
    if key == "duration_seconds":
        return _finite(run.duration_seconds)
    return _finite(result.get(key))


# Digits each kind is shown with: values that look the same on the page rank the same.
SHOWN_DIGITS = {"loss": 4, "rate": 3, "speed": 0, "count": 0}


def _as_shown(value: float, kind: str) -> float:
    if kind == "duration":  # as format_duration prints it: 12.3 s, 4 min 05 s, 2 h 03 min
        return round(value, 1) if value < 60 else float(round(value)) if value < 3600 else round(value / 60) * 60.0
    return round(value, SHOWN_DIGITS.get(kind, 6))


def _mark_best(row: MetricRow, better: str | None) -> None:
    shown = [None if v is None else _as_shown(v, row.kind) for v in row.values]
    present = [v for v in shown if v is not None]
    if better is None or len(present) < 2 or len(set(present)) == 1:
        return
    target = min(present) if better == "min" else max(present)
    row.best = {i for i, v in enumerate(shown) if v == target}


def compare(ids: list[uuid.UUID], max_points: int) -> Comparison:
    """The runs in the order asked, their loss series, differing config values and metrics; 404-free:
    an unknown id is a ValidationError naming it."""
    found = {run.id: run for run in queries.runs_by_ids(ids)}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise ValidationError("invalid comparison", {"ids": f"no run with id {missing[0]}"})
    runs = [found[i] for i in ids]
    configs = [run.config if isinstance(run.config, dict) else {} for run in runs]
    keys = sorted({k for config in configs for k in config} - IGNORED_CONFIG)
    differences = [(k, [c.get(k) for c in configs]) for k in keys
                   if len({repr(c.get(k)) for c in configs}) > 1]
    rows = []
    for key, label, better, kind in METRICS:
        row = MetricRow(key, label, [_metric(run, key) for run in runs], kind, better,
                        examples=[_scored_on(run, key) for run in runs])
        if any(v is not None for v in row.values):
            _mark_best(row, better)
            rows.append(row)
    series = [queries.metric_series(run.id, max_points) for run in runs]
    return Comparison(runs, series, differences, rows, _warnings(runs))


def _scored_on(run: TunixRun, key: str) -> int | None:
    """How many answers a run's match rate rests on."""
    if key not in ("answer_match", "exact_match", "answer_match_before"):
        return None
    examples = (evaluation.of(run.result if isinstance(run.result, dict) else None) or {}).get("examples")
    return examples if isinstance(examples, int) else None


def _warnings(runs: list[TunixRun]) -> list[str]:
    """What makes these runs' figures not directly comparable."""
    found = []
    datasets = sorted({run.dataset_key for run in runs})
    if len(datasets) > 1:
        found.append(f"These runs trained on different datasets ({', '.join(datasets)}): their losses are not "
                     "measured on the same examples.")
    scored = sorted({f"{e.get('dataset_key')} ({e.get('source')})" for e in
                     (evaluation.of(run.result if isinstance(run.result, dict) else None) for run in runs)
                     if e and e.get("dataset_key")})
    if len(scored) > 1:
        found.append(f"These runs were scored on different eval sets ({', '.join(scored)}): their match rates "
                     "are not measured on the same questions.")
    return found