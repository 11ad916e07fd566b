"""A run's chart series, downsampled as points arrive, so the page's poll reads a bounded row.

Per split the state is {"stride": s, "seen": n, "points": [[step, loss], ...], "last": [step, loss]}:
every s-th point is kept; past 2 * MAX_POINTS the kept points are halved and the stride doubled,
so a run of any length holds at most 2 * MAX_POINTS points, evenly spread, plus its last one.
"""
from __future__ import annotations

from typing import Any

MAX_POINTS = 400
SPLITS = ("train", "eval")


def empty() -> dict[str, Any]:
    return {split: {"stride": 1, "seen": 0, "points": [], "last": None} for split in SPLITS}


def add(state: dict[str, Any], split: str, step: int, loss: float) -> None:
    """Record one point (in step order; a step at or before the last, as after a resume, replaces the tail)."""
    series = state.setdefault(split, {"stride": 1, "seen": 0, "points": [], "last": None})
    last = series["last"]
    if last is not None and step <= last[0]:
        series["points"] = [p for p in series["points"] if p[0] < step]
    if series["seen"] % series["stride"] == 0 or not series["points"]:
        series["points"].append([step, loss])
    series["seen"] += 1
    series["last"] = [step, loss]
    while len(series["points"]) > 2 * MAX_POINTS:
        series["points"] = series["points"][::2]
        series["stride"] *= 2


def for_drawing(state: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The series as the chart takes them: the kept points and the latest one."""
    drawn: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        series = state.get(split) or {}
        points = [{"step": s, "loss": loss} for s, loss in series.get("points", [])]
        last = series.get("last")
        if last and (not points or points[-1]["step"] != last[0]):
            points.append({"step": last[0], "loss": last[1]})
        drawn[split] = points
    return drawn
