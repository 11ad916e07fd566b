"""What a sweep asks for, checked field by field like a run's config (one pure function)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from app.errors import ValidationError, echo
from app.runs import validation

INVALID_SWEEP = "invalid sweep"
PARAM_TYPES = ("uniform", "log_uniform", "int", "choice")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
# Objective metric -> the direction that is better. Scores are read from the run's columns or result.
OBJECTIVES = {"final_eval_loss": "minimize", "best_eval_loss": "minimize", "final_loss": "minimize",
              "answer_match": "maximize", "exact_match": "maximize"}
PRUNABLE = ("final_eval_loss", "best_eval_loss")  # the eval loss is what trials report while they train
DIRECTIONS = ("minimize", "maximize")
MAX_TRIALS, MAX_PARALLELISM, MAX_PARAMS, MAX_CHOICES = 1000, 64, 12, 50
# Optuna's grid sampler lists every combination, at creation and again on each ask and tell: a grid is
# bounded before any of it is built (4 choices of 50 values once made a 6.25 M grid in the request).
MAX_GRID = 10_000
KNOWN_KEYS = frozenset({"name", "base", "space", "objective", "max_trials", "parallelism", "sampler", "pruner"})
# Fields a trial must not take from the search: they name the run or the data, not a hyperparameter.
NOT_SEARCHABLE = frozenset({"max_attempts", "eval_max_examples", "eval_max_new_tokens", "prompt_format", "devices"})


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict[str, Any]
    space: dict[str, dict[str, Any]]
    objective_metric: str
    direction: str
    max_trials: int
    parallelism: int
    sampler: str
    pruner: str


def _whole(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"must be a whole number from {low} to {high}")
    if not low <= int(value) <= high:
        raise ValueError(f"must be a whole number from {low} to {high}")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def _check_value(name: str, value: Any, base: dict[str, Any], model_roots: Sequence[Path]) -> Any:
    """The value as a run would take it, or ValueError with the run's own words."""
    try:
        config = validation.validate_run_config({**base, name: value}, model_roots=model_roots)
    except ValidationError as exc:
        problem = exc.details.get(name)
        if problem is None:  # the value is fine alone but not with the base (e.g. warmup past max_steps)
            key, problem = next(iter(exc.details.items()))
            raise ValueError(f"{echo(value)} leaves {key} invalid: {problem}") from None
        raise ValueError(problem if echo(value) in problem else f"{echo(value)} {problem}") from None
    return config[name]


def _check_param(name: str, raw: Any, base: dict[str, Any], model_roots: Sequence[Path]) -> dict[str, Any]:
    field = validation.FIELDS_BY_NAME.get(name)
    if field is None or name in NOT_SEARCHABLE:
        searchable = ", ".join(f.name for f in validation.FIELDS if f.name not in NOT_SEARCHABLE)
        raise ValueError(f"runs have no hyperparameter {name[:40]!r} to search (searchable: {searchable})")
    if not isinstance(raw, dict):
        raise ValueError("must be an object with a type")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise ValueError(f"type must be one of {', '.join(PARAM_TYPES)}")
    extra = set(raw) - {"type", "low", "high", "step", "values"}
    if extra:
        raise ValueError(f"unknown key {sorted(extra)[0]!r}")
    if kind == "choice":
        values = raw.get("values")
        if not isinstance(values, list) or not 1 <= len(values) <= MAX_CHOICES:
            raise ValueError(f"values must be a list of 1 to {MAX_CHOICES} values")
        checked = [_check_value(name, v, base, model_roots) for v in values]
        if len({repr(v) for v in checked}) != len(checked):
            raise ValueError("values must be distinct")
        return {"type": kind, "values": checked}
    if field.kind not in ("int", "float"):
        raise ValueError(f"{name} takes one of its choices: use type choice")
    if kind == "int" and field.kind != "int":
        raise ValueError(f"{name} is not a whole number: use uniform or log_uniform")
    if kind in ("uniform", "log_uniform") and field.kind != "float":
        raise ValueError(f"{name} is a whole number: use int")
    bounds = {}
    for key in ("low", "high"):
        try:
            bounds[key] = _number(raw.get(key))
        except ValueError:
            raise ValueError(f"{key} must be a finite number") from None
    low, high = bounds["low"], bounds["high"]
    if not low < high:
        raise ValueError("low must be below high")
    if kind == "log_uniform" and low <= 0:
        raise ValueError("low must be above 0 for log_uniform")
    spec: dict[str, Any] = {"type": kind, "low": _check_value(name, raw["low"], base, model_roots),
                            "high": _check_value(name, raw["high"], base, model_roots)}
    if kind == "int":
        if not (low.is_integer() and high.is_integer()):
            raise ValueError("low and high must be whole numbers")
        step = raw.get("step", 1)
        spec["step"] = _whole(step, 1, int(high - low))
        if (spec["high"] - spec["low"]) % spec["step"]:
            raise ValueError("high - low must be a multiple of step")
    elif "step" in raw:
        raise ValueError("step applies to int only")
    return spec


def grid_size(space: dict[str, dict[str, Any]]) -> int:
    return math.prod(len(p["values"]) for p in space.values())


def validate_sweep(raw: Any, *, model_roots: Sequence[Path] = (), max_parallelism: int = MAX_PARALLELISM) -> SweepSpec:
    """The sweep with defaults filled in, or ValidationError naming every bad field ("space.lr", "base.x")."""
    if not isinstance(raw, dict):
        raise ValidationError(INVALID_SWEEP, {"body": "must be a JSON object"})
    errors: dict[str, str] = {f"{key}": "unknown field" for key in sorted(set(raw) - KNOWN_KEYS)}

    name = raw.get("name")
    try:
        name = validation.check_name(name)
        if not name:
            raise ValueError("is required")
    except ValueError as exc:
        errors["name"] = str(exc)

    base: dict[str, Any] = {}
    raw_base = raw.get("base")
    if not isinstance(raw_base, dict):
        errors["base"] = "must be an object holding a run's config (dataset_key, model_id, hyperparameters)"
    else:
        try:
            base = validation.validate_run_config(raw_base, model_roots=model_roots)
        except ValidationError as exc:
            errors.update({f"base.{k}": v for k, v in exc.details.items()})

    space: dict[str, dict[str, Any]] = {}
    raw_space = raw.get("space")
    if not isinstance(raw_space, dict) or not raw_space:
        errors["space"] = "must be an object naming at least one hyperparameter"
    elif len(raw_space) > MAX_PARAMS:
        errors["space"] = f"may name at most {MAX_PARAMS} hyperparameters"
    elif base:
        for key, param in raw_space.items():
            try:
                space[key] = _check_param(str(key), param, base, model_roots)
            except ValueError as exc:
                errors[f"space.{str(key)[:40]}"] = str(exc)

    objective = raw.get("objective") or {}
    metric, direction = None, None
    if not isinstance(objective, dict):
        errors["objective"] = "must be an object with a metric"
    else:
        metric = objective.get("metric", "final_eval_loss")
        if metric not in OBJECTIVES:
            errors["objective.metric"] = f"must be one of {', '.join(OBJECTIVES)}"
            metric = None
        direction = objective.get("direction") or (OBJECTIVES.get(metric) if metric else None)
        if direction not in DIRECTIONS:
            errors["objective.direction"] = f"must be one of {', '.join(DIRECTIONS)}"

    numbers = {}
    for key, default, high in (("max_trials", 10, MAX_TRIALS), ("parallelism", 1, max_parallelism)):
        try:
            numbers[key] = _whole(raw.get(key, default), 1, high)
        except ValueError as exc:
            errors[key] = str(exc)
    sampler, pruner = raw.get("sampler", "tpe"), raw.get("pruner", "none")
    if sampler not in SAMPLERS:
        errors["sampler"] = f"must be one of {', '.join(SAMPLERS)}"
    if pruner not in PRUNERS:
        errors["pruner"] = f"must be one of {', '.join(PRUNERS)}"
    elif pruner == "median" and metric and metric not in PRUNABLE:
        errors["pruner"] = (f"median prunes on the eval loss trials report while they train: use it with "
                            f"{' or '.join(PRUNABLE)}, not {metric}")
    if sampler == "grid" and space and not errors:
        not_choice = [k for k, p in space.items() if p["type"] != "choice"]
        if not_choice:
            errors["sampler"] = f"grid takes choice parameters only ({', '.join(not_choice)} is not one)"
        elif grid_size(space) > MAX_GRID:
            errors["space"] = (f"the grid holds {grid_size(space):,} combinations, more than the {MAX_GRID:,} a grid "
                               "sweep may hold: offer fewer values, or search with tpe or random")
        elif numbers["max_trials"] > grid_size(space):
            errors["max_trials"] = f"the grid holds {grid_size(space)} combinations: ask for at most that many"
    if base and base.get("eval_max_examples") == 0 and metric in ("answer_match", "exact_match"):
        errors["objective.metric"] = f"{metric} needs scoring: base.eval_max_examples is 0"
    if errors:
        raise ValidationError(INVALID_SWEEP, errors)
    return SweepSpec(name, base, space, metric, direction, numbers["max_trials"], numbers["parallelism"],
                     sampler, pruner)
