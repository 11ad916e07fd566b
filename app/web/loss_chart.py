"""The loss curve, drawn on the server as SVG so the 4 s status poll refreshes it with no chart library."""
from __future__ import annotations

import math

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 240
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 16, 16, 32
MAX_POINTS = 400  # per series; longer series are thinned so the fragment stays small


def _thin(points: list[dict]) -> list[dict]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high == low:
        return [low]
    return [low + (high - low) * i / count for i in range(count + 1)]


def render_svg(series: dict[str, list[dict]]) -> Markup | None:
    """An SVG line chart of train (and eval) loss by step, or None when nothing was recorded yet."""
    train, evals = _thin(series.get("train", [])), _thin(series.get("eval", []))
    everything = train + evals
    if not everything:
        return None
    steps = [p["step"] for p in everything]
    losses = [p["loss"] for p in everything]
    x_low, x_high = min(steps), max(steps)
    y_low, y_high = min(losses), max(losses)
    if y_high == y_low:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(step: float) -> float:
        return PAD_LEFT + (plot_w * (step - x_low) / (x_high - x_low) if x_high > x_low else plot_w / 2)

    def y(loss: float) -> float:
        return PAD_TOP + plot_h * (1 - (loss - y_low) / (y_high - y_low))

    parts = [f'<svg class="loss-chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="Loss by step" xmlns="http://www.w3.org/2000/svg">']
    for tick in _ticks(y_low, y_high):
        parts.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}"/><text class="tick" x="{PAD_LEFT - 6}" y="{y(tick) + 4:.1f}" '
                     f'text-anchor="end">{tick:.3g}</text>')
    for tick in _ticks(x_low, x_high):
        parts.append(f'<text class="tick" x="{x(tick):.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                     f'{int(round(tick))}</text>')
    for name, points in (("train", train), ("eval", evals)):
        if not points:
            continue
        coords = " ".join(f"{x(p['step']):.1f},{y(p['loss']):.1f}" for p in points)
        parts.append(f'<polyline class="series-{name}" fill="none" points="{coords}"/>')
        if len(points) == 1 or name == "eval":
            parts.extend(f'<circle class="series-{name}" cx="{x(p["step"]):.1f}" cy="{y(p["loss"]):.1f}" r="3"/>'
                         for p in points)
    parts.append(f'<text class="legend" x="{PAD_LEFT + 8}" y="{PAD_TOP + 12}">'
                 f'{escape("— train loss")}{"  ● eval loss" if evals else ""}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
