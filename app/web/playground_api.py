"""The playground's JSON API: ask a model (202), read the answers as they come, cancel, a model's history.

Its routes join the API blueprint (bearer tokens; a JSON body only, so no cross-site form can post one).
"""
from __future__ import annotations

from flask import current_app, jsonify, request, url_for

from app.errors import ValidationError
from app.playground import service as playground
from app.runs.service import model_roots
from app.web import serializers
from app.web.api import bp
from app.web.auth import current_actor
from app.web.lookups import whole_number_arg
from app.web.model_api import _body


def limits() -> playground.Settings:
    return playground.Settings.from_config(current_app.config)


def request_json(row) -> dict:
    """A request as the API shows it, with its wait while it waits."""
    config = current_app.config
    wait = None if row.status != "pending" else playground.wait_of(row, config["LEASE_TIMEOUT_SECONDS"],
                                                                   config["PLAYGROUND_PASSOVER_SECONDS"])
    return serializers.generation_request(row, wait)


@bp.post("/generate")
def generate():
    body, error = _body({"model", "prompts", "settings"})
    if error:
        return error
    row, = playground.submit([body.get("model")], body.get("prompts"), body.get("settings"), current_actor(),
                             limits(), model_roots(current_app.config))
    return jsonify(request_json(row)), 202, {"Location": url_for("api.get_generation", request_id=row.id)}


@bp.get("/generate/<request_id>")
def get_generation(request_id: str):
    return jsonify(request_json(playground.get(request_id, limits())))


@bp.post("/generate/<request_id>/cancel")
def cancel_generation(request_id: str):
    row = playground.cancel(playground.get(request_id, limits()), current_actor())
    return jsonify(request_json(row))


@bp.get("/generate")
def generation_history():
    """The requests asked of one model (?model=, as a request names it), newest first."""
    model = request.args.get("model", "")
    if not model.strip():
        raise ValidationError("invalid query", {"model": "is required: the model whose history to read"})
    target = playground.target_of(model, model_roots(current_app.config))
    limit = whole_number_arg("limit", minimum=1, maximum=200, default=50)
    return jsonify({"model": target.model, "model_key": target.key, "requests": [
        serializers.generation_request(row) for row in playground.history(target.key, limit)]})
