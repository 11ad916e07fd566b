"""The trainer's progress protocol: one JSON object per line on stdout.

Events (each a JSON object with an "event" key):
  phase       {"name"}: one of PHASES, as the trainer moves from one part of its work to the next
  start       {"total_steps", "steps_per_epoch", "num_epochs", "train_examples", "eval_examples", ...}
  step        {"step", "loss", "learning_rate", "tokens_per_second", "elapsed_seconds"}
  eval        {"step", "loss"}
  checkpoint  {"step", "path"}
  evaluate    {"phase": "before"|"after", "done", "total"}, and "metrics" with the last one of a pass
              (with "batch_seconds": one batch's time without compilation, to foresee the next pass)
  end         {"steps", "final_loss", "best_loss", "best_eval_loss", "tokens_per_second", "evaluation", ...}
  error       {"message"}
Human-readable lines may be interleaved; they are kept in the stdout tail.
Shared by the trainer (which writes) and the app (which reads); imports nothing heavy.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any

EVENTS = frozenset({"phase", "start", "step", "eval", "checkpoint", "evaluate", "end", "error"})
# What the trainer is doing, in order; the run page names it and bases the time left on it.
LOADING, SCORING_BEFORE, TRAINING, SCORING_AFTER, STORING = (
    "loading", "scoring_before", "training", "scoring_after", "storing")
PHASES = (LOADING, SCORING_BEFORE, TRAINING, SCORING_AFTER, STORING)


def encode_event(event: str, **fields: Any) -> str:
    """One protocol line (without the newline)."""
    if event not in EVENTS:
        raise ValueError(f"unknown progress event {event!r}")
    return json.dumps({"event": event, **fields}, separators=(",", ":"), allow_nan=False)


def emit(event: str, **fields: Any) -> None:
    """Print one protocol line on stdout and flush it (used by the trainer)."""
    sys.stdout.write(encode_event(event, **fields) + "\n")
    sys.stdout.flush()


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """The event a line carries, or None for a human-readable line."""
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("event") not in EVENTS:
        return None
    return value


def finite(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def metric_point(event: dict[str, Any]) -> dict[str, Any] | None:
    """A stored metric point from a step or eval event, or None when it is not one."""
    kind = event.get("event")
    if kind not in ("step", "eval"):
        return None
    step, loss = event.get("step"), finite(event.get("loss"))
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or loss is None:
        return None
    return {"split": "train" if kind == "step" else "eval", "step": step, "loss": loss,
            "learning_rate": finite(event.get("learning_rate")),
            "tokens_per_second": finite(event.get("tokens_per_second"))}


def summary_from_events(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trainer's closing summary (its last "end" event), with the start facts merged in."""
    start = next((e for e in events if e.get("event") == "start"), None)
    end = next((e for e in reversed(events) if e.get("event") == "end"), None)
    if start is None and end is None:
        return None
    summary: dict[str, Any] = {}
    for event in (start, end):
        if event:
            summary.update({k: v for k, v in event.items() if k != "event"})
    return summary


def error_from_events(events: list[dict[str, Any]]) -> str | None:
    """The message of the trainer's last "error" event, if it reported one."""
    error = next((e for e in reversed(events) if e.get("event") == "error"), None)
    if error is None:
        return None
    return str(error.get("message") or "the trainer reported an error")[:2000]
