"""The loss curve, drawn on the server as SVG so the 4 s status poll refreshes it with no chart library.

Two sizes are drawn from the same series: a wide one, and a narrow one with larger type that
the stylesheet shows on phones instead (an SVG scaled down to 390 px would shrink its labels
past reading).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup, escape

from app.web.chart_frame import Axis, Frame, Margins, axes, integer_label, nice_ticks

MAX_POINTS = 400  # per series; longer series are thinned so the fragment stays small
SERIES = (("train", "train loss"), ("eval", "eval loss"))


@dataclass(frozen=True)
class Size:
    name: str
    width: int
    height: int
    font: int  # px, in the SVG's own units
    x_ticks: int
    y_ticks: int


WIDE = Size("wide", 640, 260, 11, 6, 5)
NARROW = Size("narrow", 360, 240, 14, 3, 4)


def _thin(points: list[dict]) -> list[dict]:
    if len(points) <= MAX_POINTS:
        return points
    stride = math.ceil(len(points) / MAX_POINTS)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _describe(name: str, points: list[dict]) -> str:
    best = min(points, key=lambda p: p["loss"])
    return (f"{name}: {points[0]['loss']:.4g} at step {points[0]['step']}, {points[-1]['loss']:.4g} at step "
            f"{points[-1]['step']}, best {best['loss']:.4g} at step {best['step']}.")


def _frame(points: list[dict], size: Size, ident: str, title: str, summary: str) -> Frame:
    steps = [p["step"] for p in points]
    losses = [p["loss"] for p in points]
    y_ticks = nice_ticks(min(losses), max(losses), size.y_ticks)
    x_ticks = [t for t in nice_ticks(min(steps), max(steps), size.x_ticks) if t == int(t)]
    font = size.font
    return axes(f"loss-chart {size.name}", size.width, size.height, font,
                Margins(font * 4 + 8, 12, font * 2 + 10, font * 3 + 8), ident, title, summary,
                Axis(x_ticks, min(x_ticks[0], min(steps)), max(x_ticks[-1], max(steps)), "step", label=integer_label),
                Axis(y_ticks, y_ticks[0], y_ticks[-1], "loss"))


def _coords(frame: Frame, points: list[dict]) -> str:
    return " ".join(f"{frame.x(p['step']):.1f},{frame.y(p['loss']):.1f}" for p in points)


def render_svg(series: dict[str, list[dict]], size: Size = WIDE) -> Markup | None:
    """An SVG line chart of train (and eval) loss by step, or None when nothing was recorded yet."""
    lines = {key: _thin(series.get(key, [])) for key, _ in SERIES}
    everything = [p for points in lines.values() for p in points]
    if not everything:
        return None
    summary = " ".join(_describe(label, lines[key]) for key, label in SERIES if lines[key])
    frame = _frame(everything, size, f"loss-chart-{size.name}", "Loss by step", summary)
    parts, font, legend_x = frame.parts, size.font, frame.left
    for key, label in SERIES:
        points = lines[key]
        if not points:
            continue
        parts.append(f'<polyline class="series-{key}" fill="none" points="{_coords(frame, points)}"/>')
        if len(points) == 1 or key == "eval":
            parts.extend(f'<circle class="series-{key}" cx="{frame.x(p["step"]):.1f}" cy="{frame.y(p["loss"]):.1f}" '
                         f'r="3"/>' for p in points)
        # The legend sits above the plot, each swatch drawn like its line.
        parts.append(f'<line class="series-{key} swatch" x1="{legend_x}" x2="{legend_x + 22}" y1="{font + 2}" '
                     f'y2="{font + 2}"/><text class="legend legend-{key}" x="{legend_x + 28}" '
                     f'y="{font + 2 + font / 3:.1f}">{label}</text>')
        legend_x += 28 + int(len(label) * font * 0.62) + 18
    parts.append("</svg>")
    return Markup("".join(parts))


# Eight colours told apart by most forms of colour blindness (Okabe-Ito, with black swapped for grey-blue).
RUN_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#5a6b7b", "#B8A000")


COMPARE = Size("compare", 720, 300, 11, 6, 5)  # one size: the legend says which line is which on any screen


def render_comparison(runs: list[tuple[str, dict[str, list[dict]]]], size: Size = COMPARE) -> Markup | None:
    """Every run's loss curves on one chart: a colour per run, train solid, eval dashed, a legend below.

    `runs` holds (label, series) pairs in legend order; None when no run recorded a point.
    """
    thinned = [(label, {key: _thin(series.get(key, [])) for key, _ in SERIES}) for label, series in runs]
    everything = [p for _, lines in thinned for points in lines.values() for p in points]
    if not everything:
        return None
    font = size.font
    height = size.height + len(thinned) * (font + 8)
    summary = " ".join(f"{label}: " + " ".join(_describe(name, lines[key]) for key, name in SERIES if lines[key])
                       for label, lines in thinned if any(lines.values()))
    frame = _frame(everything, size, "compare-chart", "Loss by step, every run", summary)
    # The legend rows go below the plot: the picture grows by one row per run.
    frame.parts[0] = frame.parts[0].replace(f'viewBox="0 0 {size.width} {size.height}"',
                                            f'viewBox="0 0 {size.width} {height}"', 1)
    parts = frame.parts
    parts.append(f'<text class="legend" x="{frame.left}" y="{font + 2}">solid: train loss, dashed: eval loss</text>')
    for index, (label, lines) in enumerate(thinned):
        colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        for key, _ in SERIES:
            if lines[key]:
                dash = ' stroke-dasharray="5 3"' if key == "eval" else ""
                parts.append(f'<polyline class="run-line run-{index} {key}" fill="none" stroke="{colour}" '
                             f'stroke-width="2"{dash} points="{_coords(frame, lines[key])}"/>')
        row_y = size.height + index * (font + 8) + font
        parts.append(f'<g class="legend-entry run-{index}"><line x1="{frame.left}" x2="{frame.left + 22}" '
                     f'y1="{row_y - font / 3:.1f}" y2="{row_y - font / 3:.1f}" stroke="{colour}" stroke-width="3"/>'
                     f'<text class="legend" x="{frame.left + 28}" y="{row_y:.1f}">{escape(label)}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def render_charts(series: dict[str, list[dict]]) -> Markup | None:
    """Both sizes of the chart, for the stylesheet to pick by screen width; None when there is no point yet."""
    wide = render_svg(series, WIDE)
    return None if wide is None else Markup(wide + render_svg(series, NARROW))
