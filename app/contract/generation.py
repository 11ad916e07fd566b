"""A playground request's contract: what it may ask (prompts, sampler settings) and the lines its
generation server speaks. Read by the web tier (to refuse bad input), the worker and the server alike.

Sampler settings follow Tunix's sampler: temperature 0 decodes greedily; above 0 it samples from the
top-p nucleus (top_p 1.0 when unset), optionally cut to the top_k tokens, from `seed`.
"""
from __future__ import annotations

import json
from typing import Any

RUNS_PREFIX = "runs:/"  # runs:/<run id>: the model a completed run exported

MAX_PROMPTS = 8
MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 512
MAX_TOP_K = 1000
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**31 - 1
DEFAULT_SETTINGS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.0, "top_p": None, "top_k": None,
                                    "seed": 0}
SETTING_NAMES = tuple(DEFAULT_SETTINGS)

# A request's states, in the order it moves through them.
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "pending", "running", "completed", "failed", "cancelled"
STATES = (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED)
LIVE_STATES = (PENDING, RUNNING)
TERMINAL_STATES = (COMPLETED, FAILED, CANCELLED)

# The server's lines on stdout, one JSON object each: ready {memory_bytes}, loading {key}, loaded {key,
# seconds, bytes, evicted}, answer {index, text, tokens, ttft_seconds, seconds, tokens_per_second},
# done {held}, cancelled {held}, error {message, held}.
SERVER_EVENTS = frozenset({"ready", "loading", "loaded", "answer", "done", "cancelled", "error"})


def is_run_ref(model: str) -> bool:
    return model.startswith(RUNS_PREFIX)


def _number(settings: dict, name: str, problems: dict[str, str], *, integer: bool, low, high, allow_none: bool):
    value = settings.get(name, DEFAULT_SETTINGS[name])
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        problems[f"settings.{name}"] = f"must be {'a whole number' if integer else 'a number'} from {low} to {high}"
        return None
    if not low <= value <= high:
        problems[f"settings.{name}"] = f"must be from {low} to {high}, got {value}"
        return None
    return int(value) if integer else float(value)


def check_settings(settings: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(the settings with defaults filled in, field -> problem). Unknown names are refused by name."""
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        return {}, {"settings": "must be a JSON object"}
    problems: dict[str, str] = {f"settings.{k}": "unknown setting" for k in settings if k not in DEFAULT_SETTINGS}
    checked = {
        "max_new_tokens": _number(settings, "max_new_tokens", problems, integer=True, low=1, high=MAX_NEW_TOKENS,
                                  allow_none=False),
        "temperature": _number(settings, "temperature", problems, integer=False, low=0.0, high=MAX_TEMPERATURE,
                               allow_none=False),
        "top_p": _number(settings, "top_p", problems, integer=False, low=0.0, high=1.0, allow_none=True),
        "top_k": _number(settings, "top_k", problems, integer=True, low=1, high=MAX_TOP_K, allow_none=True),
        "seed": _number(settings, "seed", problems, integer=True, low=0, high=MAX_SEED, allow_none=False),
    }
    if checked["top_p"] == 0.0:
        problems["settings.top_p"] = "must be above 0 (1.0 keeps every token)"
    if not checked["temperature"] and "settings.temperature" not in problems:
        for name in ("top_p", "top_k"):
            if checked[name] is not None:
                problems[f"settings.{name}"] = "applies only when sampling: set a temperature above 0"
    return checked, problems


def check_prompts(prompts: Any) -> tuple[list[str], dict[str, str]]:
    """(the prompts, field -> problem): 1 to MAX_PROMPTS non-blank strings of at most MAX_PROMPT_CHARS."""
    if not isinstance(prompts, list) or not prompts:
        return [], {"prompts": f"must be a list of 1 to {MAX_PROMPTS} prompts"}
    if len(prompts) > MAX_PROMPTS:
        return [], {"prompts": f"must hold at most {MAX_PROMPTS} prompts, got {len(prompts)}"}
    problems = {}
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            problems[f"prompts[{i}]"] = "must be a non-blank string"
        elif len(prompt) > MAX_PROMPT_CHARS:
            problems[f"prompts[{i}]"] = f"must be at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}"
        elif "\x00" in prompt:
            problems[f"prompts[{i}]"] = "must not contain NUL characters"
    return (list(prompts) if not problems else []), problems


def sampler_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments Tunix's sampler takes for these settings (greedy when temperature is 0)."""
    if not settings["temperature"]:
        return {"temperature": 0.0}
    return {"temperature": settings["temperature"], "top_p": settings["top_p"] if settings["top_p"] is not None
            else 1.0, "top_k": settings["top_k"], "seed": settings["seed"]}


def describe(settings: dict[str, Any]) -> str:
    """The settings in a few words, for the history: 'greedy, 64 tokens' or 'T 0.7, top-p 0.9, seed 3, …'."""
    if not settings.get("temperature"):
        return f"greedy, up to {settings['max_new_tokens']} tokens"
    parts = [f"temperature {settings['temperature']:g}", f"top-p {settings['top_p'] if settings['top_p'] is not None else 1:g}"]
    if settings.get("top_k"):
        parts.append(f"top-k {settings['top_k']}")
    parts.append(f"seed {settings['seed']}")
    return ", ".join(parts) + f", up to {settings['max_new_tokens']} tokens"


def storable(text: str) -> str:
    """An answer as Postgres can keep it: a NUL (which a byte-level model may well generate) becomes U+FFFD, as
    the evaluation's stored predictions have it."""
    return text.replace("\x00", "\ufffd")


def encode_line(event: str, **fields: Any) -> str:
    """One server line, without its newline."""
    if event not in SERVER_EVENTS:
        raise ValueError(f"unknown server event {event!r}")
    return json.dumps({"event": event, **fields}, separators=(",", ":"), allow_nan=False)
