"""The frame every chart of the app is drawn on, as SVG on the server: axes, ticks, grid and titles.

The loss curves (`app.web.loss_chart`) and the sweep's plots (`app.web.sweep_charts`) each draw
their lines and points on one of these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from markupsafe import escape


def nice_ticks(low: float, high: float, count: int) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value < high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def number_label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


@dataclass(frozen=True)
class Axis:
    """One axis: its ticks, the range it spans (in data units), its title, and how values map onto it."""

    ticks: list[float]
    low: float
    high: float
    title: str
    scale: Callable[[float], float] = float  # math.log10 for a log axis
    label: Callable[[float], str] = number_label


@dataclass(frozen=True)
class Margins:
    left: int
    right: int
    top: int
    bottom: int


@dataclass
class Frame:
    """The axes of one chart, drawn (ticks, grid, titles), and the scales to place points with."""

    parts: list[str]
    x: Callable[[float], float]
    y: Callable[[float], float]
    left: int


def axes(css_class: str, width: int, height: int, font: int, margins: Margins, ident: str, title: str,
         summary: str, x_axis: Axis, y_axis: Axis) -> Frame:
    """An SVG chart's opening, its title and description (for screen readers), grid, ticks and axis titles;
    every chart of the app (loss curves, sweep plots) is drawn on one of these."""
    left, top = margins.left, margins.top
    plot_w, plot_h = width - left - margins.right, height - top - margins.bottom
    x_low, x_high = x_axis.scale(x_axis.low), x_axis.scale(x_axis.high)
    y_low, y_high = y_axis.low, y_axis.high

    def x(value: float) -> float:
        return left + (plot_w * (x_axis.scale(value) - x_low) / (x_high - x_low) if x_high > x_low else plot_w / 2)

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - y_low) / (y_high - y_low))

    parts = [f'<svg class="{css_class}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-labelledby="{ident}-title {ident}-desc" font-size="{font}" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{ident}-title">{escape(title)}</title><desc id="{ident}-desc">{escape(summary)}</desc>']
    for tick in y_axis.ticks:
        parts.append(f'<line class="grid" x1="{left}" x2="{width - margins.right}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}"/><text class="tick" x="{left - 6}" y="{y(tick) + font / 3:.1f}" '
                     f'text-anchor="end">{y_axis.label(tick)}</text>')
    for tick in x_axis.ticks:
        if x_low - 1e-9 <= x_axis.scale(tick) <= x_high + 1e-9:
            parts.append(f'<text class="tick" x="{x(tick):.1f}" y="{top + plot_h + font + 4}" '
                         f'text-anchor="middle">{x_axis.label(tick)}</text>')
    parts.append(f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{height - 6}" '
                 f'text-anchor="middle">{escape(x_axis.title)}</text>')
    parts.append(f'<text class="axis-title" transform="translate({font + 2},{top + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_axis.title)}</text>')
    return Frame(parts, x, y, left)


def integer_label(value: float) -> str:
    return f"{int(value)}"
