"""A sweep's charts, drawn on the server as SVG like the loss curve: the objective by trial number with
the best so far, and the objective against each numeric hyperparameter (a log axis for log_uniform)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup, escape

from app.web.loss_chart import _label, nice_ticks

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
        to_x = math.log10
    else:
        x_ticks = nice_ticks(min(xs), max(xs), 6)
        if integer_x:
            x_ticks = [t for t in x_ticks if t == int(t)] or [min(xs)]
        to_x = float
    x_low, x_high = to_x(min(x_ticks[0], min(xs))), to_x(max(x_ticks[-1], max(xs)))
    y_low, y_high = y_ticks[0], y_ticks[-1]
    left, right, top, bottom = FONT * 5 + 8, 14, FONT + 10, FONT * 3 + 8
    plot_w, plot_h = WIDTH - left - right, HEIGHT - top - bottom

    def sx(value: float) -> float:
        return left + (plot_w * (to_x(value) - x_low) / (x_high - x_low) if x_high > x_low else plot_w / 2)

    def sy(value: float) -> float:
        return top + plot_h * (1 - (value - y_low) / (y_high - y_low))

    summary = "; ".join(p.title for p in points[:40])
    parts = [f'<svg class="sweep-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-size="{FONT}" '
             f'aria-labelledby="{ident}-title {ident}-desc" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{ident}-title">{escape(title)}</title><desc id="{ident}-desc">{escape(summary)}</desc>']
    for tick in y_ticks:
        parts.append(f'<line class="grid" x1="{left}" x2="{WIDTH - right}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{sy(tick) + FONT / 3:.1f}" text-anchor="end">'
                     f'{_label(tick)}</text>')
    for tick in x_ticks:
        if to_x(tick) < x_low - 1e-9 or to_x(tick) > x_high + 1e-9:
            continue
        text = f"{int(tick)}" if integer_x else _label(tick)
        parts.append(f'<text class="tick" x="{sx(tick):.1f}" y="{top + plot_h + FONT + 4}" '
                     f'text-anchor="middle">{text}</text>')
    parts.append(f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                 f'{escape(x_label)}{" (log scale)" if log_x else ""}</text>')
    parts.append(f'<text class="axis-title" transform="translate({FONT + 2},{top + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text>')
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
