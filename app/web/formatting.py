"""How the pages write durations, sizes and times; exposed to every template."""
from __future__ import annotations

from datetime import datetime, timezone

from app.run_states import DRY_RUN, MODE_CHOICES, MODES, PENDING, STATUSES
from app.contract import device_mesh


def format_duration(seconds: float | None) -> str:
    """'12.3 s', '4 min 05 s' or '2 h 03 min'; '—' when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def format_bytes(size: int | None) -> str:
    """'512 B', '1.5 KB' ... '2.0 GB'; '—' when unknown."""
    if size is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def format_count(count: int | None) -> str:
    """A parameter count as people say it: '157k', '3.4M', '1.2B'."""
    if count is None:
        return "—"
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if count >= size:
            return f"{count / size:.1f}{unit}" if count < 100 * size else f"{count / size:.0f}{unit}"
    return str(count)


def format_time(value: datetime | None) -> str:
    """A UTC timestamp to the second; '—' when unknown."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


RATE_METRICS = frozenset({"answer_match", "exact_match"})


def format_metric(name: str, value: float | None) -> str:
    """A metric as every page shows it: a match rate as a percentage to 0.1, a loss to 4 decimals."""
    if value is None:
        return "—"
    return f"{value * 100:.1f}%" if name in RATE_METRICS else f"{value:.4f}"


def format_param(value) -> str:
    """A hyperparameter value as every page shows it: a number to 4 significant digits, a mesh as the form
    writes it."""
    if isinstance(value, dict) and value and set(value) <= set(device_mesh.AXES):
        return device_mesh.describe(value)
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


PREVIEW_CHARS = 2000  # a previewed prompt or response is cut here; the dataset keeps it whole


def template_globals() -> dict:
    """What every template may use."""
    return {"STATUSES": STATUSES, "MODES": MODES, "MODE_CHOICES": MODE_CHOICES,
            "PENDING": PENDING, "DRY_RUN": DRY_RUN, "PREVIEW_CHARS": PREVIEW_CHARS,
            "format_duration": format_duration, "format_bytes": format_bytes, "format_time": format_time,
            "format_count": format_count, "describe_mesh": device_mesh.describe,
            "format_metric": format_metric, "format_param": format_param}
