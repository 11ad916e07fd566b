"""The sweep pages: the list, the form, a sweep's page and the status fragment it polls."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for

from app.contract import model_catalog
from app.datasets import store as dataset_store
from app.datasets.sample import SAMPLE_KEY
from app.errors import ValidationError
from app.models import TRIAL_COMPLETE, TRIAL_STATES, Sweep
from app.registry import service as registry
from app.runs import validation
from app.sweeps import queries as sweep_queries, service as sweep_service, spec as sweep_spec
from app.web import sweep_charts
from app.web.auth import current_actor
from app.web.lookups import sweep_or_404

bp = Blueprint("sweeps", __name__, url_prefix="/sweeps")

SEARCHABLE = [f for f in validation.FIELDS if f.name not in sweep_spec.NOT_SEARCHABLE]


@bp.get("")
def list_sweeps():
    return render_template("sweeps/list.html", sweeps=sweep_queries.list_sweeps(100))


def _form_defaults() -> dict[str, Any]:
    values = {f"base.{k}": v for k, v in validation.form_defaults().items()}
    values.update({"base.dataset_key": request.args.get("dataset_key") or SAMPLE_KEY, "base.max_steps": 200,
                   "name": "", "objective.metric": "final_eval_loss", "objective.direction": "",
                   "max_trials": 8, "parallelism": 2, "sampler": "tpe", "pruner": "none",
                   "space.learning_rate.type": "log_uniform", "space.learning_rate.low": "0.0001",
                   "space.learning_rate.high": "0.01"})
    return values


def _form_context(values: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    return {"values": values, "errors": errors, "fields": SEARCHABLE, "base_fields": validation.FIELDS, "datasets": dataset_store.list_datasets(),
            "presets": model_catalog.PRESETS, "registered": registry.pickable(), "objectives": sweep_spec.OBJECTIVES, "samplers": sweep_spec.SAMPLERS,
            "pruners": sweep_spec.PRUNERS, "param_types": sweep_spec.PARAM_TYPES}


@bp.get("/new")
def new_sweep():
    return render_template("sweeps/new.html", **_form_context(_form_defaults(), {}))


def _number(text: str) -> Any:
    """A form's number as JSON would carry it (so the checks see what the API sees)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def sweep_from_form(form) -> dict[str, Any]:
    """The API's sweep body, from the form's flat fields."""
    base = {key[5:]: value for key, value in form.items() if key.startswith("base.") and value.strip() != ""}
    space: dict[str, Any] = {}
    for field in SEARCHABLE:
        kind = form.get(f"space.{field.name}.type", "")
        if not kind:
            continue
        if kind == "choice":
            values = [part.strip() for part in form.get(f"space.{field.name}.values", "").split(",") if part.strip()]
            space[field.name] = {"type": kind, "values": [_number(v) for v in values]}
        else:
            param = {"type": kind, "low": _number(form.get(f"space.{field.name}.low", "").strip()),
                     "high": _number(form.get(f"space.{field.name}.high", "").strip())}
            if kind == "int" and form.get(f"space.{field.name}.step", "").strip():
                param["step"] = _number(form[f"space.{field.name}.step"].strip())
            space[field.name] = param
    objective = {"metric": form.get("objective.metric", "")}
    if form.get("objective.direction"):
        objective["direction"] = form["objective.direction"]
    raw: dict[str, Any] = {"name": form.get("name", ""), "base": base, "space": space, "objective": objective,
                           "sampler": form.get("sampler", ""), "pruner": form.get("pruner", "")}
    for key in ("max_trials", "parallelism"):
        raw[key] = _number(form.get(key, "").strip())
    return raw


@bp.post("/new")
def create_sweep():
    values = {k: v for k, v in request.form.items() if k != "csrf_token"}
    try:
        sweep = sweep_service.create_sweep(sweep_from_form(request.form), current_actor())
    except ValidationError as exc:
        return render_template("sweeps/new.html", **_form_context(values, exc.details)), 422
    return redirect(url_for("sweeps.show_sweep", sweep_id=sweep.id), code=303)


def _charts(sweep: Sweep, trials) -> dict[str, Any]:
    done = [t for t in trials if t.state == TRIAL_COMPLETE and t.value is not None]
    metric = sweep.objective_metric
    by_trial = sweep_charts.scatter(
        [sweep_charts.Point(t.number, t.value, f"trial {t.number}: {metric} {t.value:.4g}") for t in done],
        ident="sweep-objective", title=f"{metric} by trial", x_label="trial", y_label=metric, integer_x=True,
        best_line=sweep_charts.best_so_far([(t.number, t.value) for t in done], sweep.direction == "minimize"))
    by_param = []
    for name, param in sweep.space.items():
        numeric = [t for t in done if isinstance(t.params.get(name), (int, float))
                   and not isinstance(t.params.get(name), bool)]
        if param["type"] == "choice" and len(numeric) != len(done):
            continue  # a choice of words has no axis
        log_x = param["type"] == "log_uniform"
        chart = sweep_charts.scatter(
            [sweep_charts.Point(t.params[name], t.value, f"trial {t.number}: {name} {t.params[name]:.4g}, "
                                                         f"{metric} {t.value:.4g}") for t in numeric
             if not log_x or t.params[name] > 0],
            ident=f"sweep-param-{name}", title=f"{metric} against {name}", x_label=name, y_label=metric, log_x=log_x)
        if chart is not None:
            by_param.append((name, chart))
    return {"objective_chart": by_trial, "param_charts": by_param}


def sweep_context(sweep: Sweep) -> dict[str, Any]:
    """What a sweep's page and its fragment show."""
    trials = sweep_queries.trials(sweep.id)
    counts = {state: sum(1 for t in trials if t.state == state) for state in TRIAL_STATES}
    best = next((t for t in trials if t.number == sweep.best_trial_number), None)
    return {"sweep": sweep, "trials": trials, "counts": counts, "best": best, **_charts(sweep, trials)}


@bp.get("/<sweep_id>")
def show_sweep(sweep_id: str):
    return render_template("sweeps/detail.html", **sweep_context(sweep_or_404(sweep_id)))


@bp.get("/<sweep_id>/status")
def sweep_status(sweep_id: str):
    """The fragment a sweep's page polls every 4 s; without hx-get once the sweep has ended."""
    return render_template("sweeps/_status.html", **sweep_context(sweep_or_404(sweep_id)))


@bp.get("/<sweep_id>/cancel")
def confirm_cancel(sweep_id: str):
    return render_template("sweeps/cancel.html", sweep=sweep_or_404(sweep_id))


@bp.post("/<sweep_id>/cancel")
def cancel(sweep_id: str):
    sweep_service.cancel_sweep(sweep_or_404(sweep_id), current_actor())
    return redirect(url_for("sweeps.show_sweep", sweep_id=sweep_id), code=303)

