"""The playground's pages: the form (a prompt, up to three models, the sampler's settings), the answers side
by side (a fragment polled while any is in progress), cancel, and the prompts asked of a model before."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from sqlalchemy import select

from app.contract import generation, model_catalog
from app.errors import AppError, TooManyRequests, ValidationError
from app.extensions import db
from app.models import TunixRun
from app.playground import service as playground
from app.registry import service as registry
from app.runs.service import model_roots
from app.web.auth import current_actor
from app.web.playground_api import limits

bp = Blueprint("playground", __name__, url_prefix="/playground")

RUNS_OFFERED = 50  # the newest completed runs with a model, in the picker
SETTING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed")


def _model_options() -> list[tuple[str, str]]:
    """(value, label) for the model picker: presets, runs' exports, registry aliases and versions."""
    runs = db.session.scalars(select(TunixRun).where(
        TunixRun.status == "completed", TunixRun.mode != "dry_run",
        TunixRun.result["exported_model"].astext.isnot(None)).order_by(TunixRun.created_at.desc())
        .limit(RUNS_OFFERED))
    return ([(name, f"{name} (preset)") for name in model_catalog.PRESETS]
            + [(f"{generation.RUNS_PREFIX}{run.id}", f"{run.title}: its export") for run in runs]
            + registry.pickable())


def _form(values: dict[str, Any], errors: dict[str, str], status: int = 200):
    model = next((m for m in values["models"] if m.strip()), "")
    past = []
    if model:
        try:
            target = playground.target_of(model, model_roots(current_app.config))
            past = playground.history(target.key, limit=20)
        except ValidationError:
            pass
    return render_template("playground/new.html", values=values, errors=errors, options=_model_options(),
                           max_models=playground.MAX_MODELS, history_model=model, history=past,
                           max_new_tokens=generation.MAX_NEW_TOKENS), status


def _number(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text  # the check names it


@bp.get("")
def new():
    models = (request.args.getlist("model") + [""] * playground.MAX_MODELS)[:playground.MAX_MODELS]
    values = {"models": models, "prompt": request.args.get("prompt", ""),
              **{name: "" if generation.DEFAULT_SETTINGS[name] is None else str(generation.DEFAULT_SETTINGS[name])
                 for name in SETTING_FIELDS}}
    return _form(values, {})


@bp.post("")
def ask():
    form = request.form
    models = [form.get(f"model_{i}", "") for i in range(playground.MAX_MODELS)]
    values = {"models": models, "prompt": form.get("prompt", ""), **{n: form.get(n, "") for n in SETTING_FIELDS}}
    chosen = [(i, m) for i, m in enumerate(models) if m.strip()]
    if not chosen:
        return _form(values, {"model_0": "choose at least one model"}, 422)
    settings = {name: _number(values[name]) for name in SETTING_FIELDS}
    settings = {k: v for k, v in settings.items() if v is not None or k in ("top_p", "top_k")}
    try:
        rows = playground.submit([m for _, m in chosen], [values["prompt"]], settings, current_actor(), limits(),
                                 model_roots(current_app.config), side_by_side=True)
    except TooManyRequests as exc:
        return _form(values, {"form": exc.message}, exc.status)
    except AppError as exc:
        errors = {}
        for field, problem in exc.details.items():
            if field in ("model", "models[0]", "models[1]", "models[2]"):
                index = 0 if field == "model" else int(field[7])
                errors[f"model_{chosen[index][0]}"] = problem
            elif field.startswith("prompts"):
                errors["prompt"] = problem
            elif field.startswith("settings."):
                errors[field[len("settings."):]] = problem
            else:
                errors["form"] = f"{exc.message}: {problem}"
        if not errors:
            errors["form"] = exc.message
        return _form(values, errors, exc.status)
    return redirect(url_for("playground.show", group_id=rows[0].group_id), 303)


def _group_context(group_id: str) -> dict[str, Any]:
    rows = playground.group(group_id, limits())
    live_seconds = current_app.config["LEASE_TIMEOUT_SECONDS"]
    passover = current_app.config["PLAYGROUND_PASSOVER_SECONDS"]
    columns = [{"row": row,
                "wait": playground.wait_of(row, live_seconds, passover) if row.status == "pending" else None,
                "may_cancel": current_actor().may_change(row.created_by), "label": playground.label_of(row)}
               for row in rows]
    return {"group_id": rows[0].group_id, "columns": columns, "prompt": rows[0].prompts[0],
            "settings": generation.describe(rows[0].settings),
            "active": any(row.status in generation.LIVE_STATES for row in rows)}


@bp.get("/<group_id>")
def show(group_id: str):
    return render_template("playground/show.html", **_group_context(group_id))


@bp.get("/<group_id>/answers")
def answers(group_id: str):
    return render_template("playground/_answers.html", **_group_context(group_id))


@bp.post("/requests/<request_id>/cancel")
def cancel(request_id: str):
    row = playground.cancel(playground.get(request_id, limits()), current_actor())
    if row.group_id is None:  # asked through the API alone: its model's history shows it
        return redirect(url_for("playground.history", model=row.model), 303)
    return redirect(url_for("playground.show", group_id=row.group_id), 303)


@bp.get("/history")
def history():
    model = request.args.get("model", "").strip()
    target = playground.target_of(model, model_roots(current_app.config))
    return render_template("playground/history.html", target=target, rows=playground.history(target.key, 100))
