"""How the pages write durations, sizes and times; exposed to every template."""
from __future__ import annotations

from datetime import datetime, timezone

from app.run_states import DRY_RUN, MODE_CHOICES, MODES, PENDING, STATUSES
from app.contract import device_mesh, generation
from app.contract.versions import STACK


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


def describe_devices(devices) -> list[str]:
    """A worker's devices as its row lists them: alike ones together, "4 × NVIDIA H200 (140.4 GB), ids 0–3"."""
    groups: dict[tuple, list] = {}
    for device in devices or []:
        if isinstance(device, dict):
            groups.setdefault((device.get("name") or device.get("kind"), device.get("memory_bytes")), []).append(
                device.get("id"))
    out = []
    for (name, memory), ids in groups.items():
        size = f" ({format_bytes(memory)})" if memory else ""
        known = sorted(i for i in ids if isinstance(i, int))
        span = "" if not known else f", id {known[0]}" if len(known) == 1 else (
            f", ids {known[0]}–{known[-1]}" if known == list(range(known[0], known[-1] + 1))
            else ", ids " + ", ".join(map(str, known)))
        out.append(f"{len(ids)} × {name}{size}{span}")
    return out


def ordered_versions(versions) -> list[tuple[str, str]]:
    """The stack's versions in its order (python, jax, jaxlib, tunix, flax), then any other; none left out."""
    versions = versions or {}
    order = [name for name in ("python", *STACK) if name in versions]
    return [(name, versions[name]) for name in order + sorted(set(versions) - set(order)) if versions[name]]


def template_globals() -> dict:
    """What every template may use."""
    return {"STATUSES": STATUSES, "MODES": MODES, "MODE_CHOICES": MODE_CHOICES,
            "PENDING": PENDING, "DRY_RUN": DRY_RUN, "PREVIEW_CHARS": PREVIEW_CHARS,
            "format_duration": format_duration, "format_bytes": format_bytes, "format_time": format_time,
            "format_count": format_count, "describe_mesh": device_mesh.describe,
            "describe_devices": describe_devices, "ordered_versions": ordered_versions,
            "format_metric": format_metric, "format_param": format_param,
            "describe_settings": generation.describe}
