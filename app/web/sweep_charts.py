"""A sweep's charts, drawn on the server as SVG like the loss curve: the objective by trial number with
the best so far, and the objective against each numeric hyperparameter (a log axis for log_uniform)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup, escape

from app.web.chart_frame import Axis, Margins, axes, integer_label, nice_ticks, number_label

WIDTH, HEIGHT, FONT = 520, 240, 11


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str  # shown on hover, and read by screen readers through the chart's description


def _log_ticks(low: float, high: float) -> list[float]:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    ticks = [10.0 ** e for e in range(first, last + 1)]
    if len(ticks) <= 3:  # a narrow range: 1, 2 and 5 of each decade
        ticks = sorted({m * 10.0 ** e for e in range(first, last + 1) for m in (1, 2, 5)})
        ticks = [t for t in ticks if low / 2.5 <= t <= high * 2.5]
    return ticks


def scatter(points: list[Point], *, ident: str, title: str, x_label: str, y_label: str, log_x: bool = False,
            best_line: list[tuple[float, float]] | None = None, integer_x: bool = False) -> Markup | None:
    """Points (and an optional step line of the best so far); None without a point."""
    if not points:
        return None
    xs, ys = [p.x for p in points], [p.y for p in points]
    y_ticks = nice_ticks(min(ys), max(ys), 5)
    if log_x:
        x_ticks = _log_ticks(min(xs), max(xs))
    else:
        x_ticks = nice_ticks(min(xs), max(xs), 6)
        if integer_x:
            x_ticks = [t for t in x_ticks if t == int(t)] or [min(xs)]
    summary = "; ".join(p.title for p in points[:40])
    frame = axes("sweep-chart", WIDTH, HEIGHT, FONT, Margins(FONT * 5 + 8, 14, FONT + 10, FONT * 3 + 8),
                 ident, title, summary,
                 Axis(x_ticks, min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs)),
                      x_label + (" (log scale)" if log_x else ""), math.log10 if log_x else float,
                      integer_label if integer_x else number_label),
                 Axis(y_ticks, y_ticks[0], y_ticks[-1], y_label))
    parts, sx, sy, left = frame.parts, frame.x, frame.y, frame.left
    if best_line:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in best_line)
        parts.append(f'<polyline class="best-so-far" fill="none" points="{coords}"/>')
        parts.append(f'<text class="legend best-so-far-label" x="{left}" y="{FONT + 2}">line: best so far</text>')
    for p in points:
        parts.append(f'<circle class="trial" cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="4">'
                     f'<title>{escape(p.title)}</title></circle>')
    parts.append("</svg>")
    return Markup("".join(parts))


def best_so_far(values: list[tuple[int, float]], minimize: bool) -> list[tuple[float, float]]:
    """The running best as a step line over trial numbers."""
    line: list[tuple[float, float]] = []
    best = None
    for number, value in sorted(values):
        if best is None or (value < best if minimize else value > best):
            if best is not None:
                line.append((number, best))
            best = value
        line.append((number, best))
    return line
