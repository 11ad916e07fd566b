"""The registry's JSON API: models, versions, aliases and their history, gates; a run's gate verdicts.

Its routes join the API blueprint (bearer tokens, no CSRF); services raise, `app.web.errors` answers.
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import jsonify, request, url_for

from app.errors import ValidationError
from app.registry import gates, queries as registry_queries, service as registry
from app.web import serializers
from app.web.api import _json_object, bp
from app.web.auth import current_actor
from app.web.lookups import run_or_404, whole_number_arg


def _body(allowed: set[str] | frozenset[str]):
    """(the request's JSON object, None), or (None, the API's refusal) as `_json_object` answers; a field
    not in `allowed` is refused by name (422)."""
    body, error = _json_object()
    unknown = sorted(set(body or {}) - allowed)
    if unknown:
        raise ValidationError("invalid body", {key: "unknown field" for key in unknown})
    return body, error


def _model_json(model) -> dict:
    aliases = registry.aliases_of(model)
    return {**serializers.registered_model(model, registry_queries.version_count(model), aliases),
            "aliases": [serializers.model_alias(row) for row in aliases],
            "gates": [serializers.model_gate(g, gates.describe(g)) for g in gates.gates_of(model)],
            "history": [serializers.alias_move(m) for m in registry.alias_history(model, limit=50)]}


@bp.get("/models")
def list_models():
    return jsonify({"models": [serializers.registered_model(row.model, row.versions, row.aliases)
                               for row in registry_queries.list_models()]})


@bp.get("/models/<name>")
def get_model(name: str):
    return jsonify(_model_json(registry.model_or_404(name)))


@bp.get("/models/<name>/versions")
def list_versions(name: str):
    model = registry.model_or_404(name)
    offset = whole_number_arg("offset", minimum=0, default=0)
    limit = whole_number_arg("limit", minimum=1, maximum=200, default=50)
    return jsonify({"name": model.name, "offset": offset, "versions": [
        serializers.model_version(v) for v in registry_queries.versions_page(model, offset, limit)]})


@bp.post("/models/<name>/versions")
def register_version(name: str):
    body, error = _body({"run_id", "alias", "description", "reason"})
    if error:
        return error
    if not isinstance(body.get("run_id"), str):
        raise ValidationError("invalid body", {"run_id": "is required: the completed run whose model to register"})
    run = run_or_404(body["run_id"])
    found = registry.register(run, name, current_actor(), alias=body.get("alias"),
                              description=body.get("description"), reason=body.get("reason"))
    version = found.version
    headers = {"Location": url_for("api.get_version", name=version.model.name, number=version.number)}
    return jsonify(serializers.model_version(version)), (201 if found.created else 200), headers


@bp.get("/models/<name>/versions/<number>")
def get_version(name: str, number: str):
    version = registry.version_or_404(registry.model_or_404(name), number)
    return jsonify({**serializers.model_version(version),
                    "trained_from_it": [str(r.id) for r in registry_queries.trained_from(version)]})


@bp.post("/models/<name>/versions/<number>/archive")
def archive_version(name: str, number: str):
    version = registry.version_or_404(registry.model_or_404(name), number)
    return jsonify(serializers.model_version(registry.archive(version, current_actor())))


@bp.put("/models/<name>/aliases/<alias>")
def move_alias(name: str, alias: str):
    body, error = _body({"version", "reason", "override", "protected"})
    if error:
        return error
    model = registry.model_or_404(name)
    row = registry.move_alias(model, alias, body.get("version"), current_actor(), reason=body.get("reason"),
                              override=body.get("override", False), protected=body.get("protected"))
    return jsonify(serializers.model_alias(row))


def when_of(raw: str) -> datetime:
    """A moment from ?at= (a date means the end of that day, UTC); ValidationError naming `at` otherwise."""
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00")) if len(raw) <= 40 else None
    except ValueError:
        when = None
    if when is None:
        raise ValidationError("invalid query", {"at": "must be an ISO 8601 date or time, e.g. 2026-11-30 or "
                                                      "2026-11-30T12:00:00Z"})
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if len(raw.strip()) == 10:  # a date: where the alias stood at the end of that day
        when = when.replace(hour=23, minute=59, second=59, microsecond=999999)
    return when


@bp.get("/models/<name>/aliases/<alias>")
def get_alias(name: str, alias: str):
    """Where an alias points, and its history; ?at=<date or time> says where it pointed then."""
    model = registry.model_or_404(name)
    alias = registry.check_alias(alias)
    at = request.args.get("at")
    history = registry.alias_history(model, alias)
    answer = {"alias": alias, "history": [serializers.alias_move(m) for m in history]}
    if at is not None:
        move = registry.alias_at(model, alias, when_of(at))
        answer.update(at=when_of(at).isoformat(), version=move.to_number if move else None)
    else:
        current = next((row for row in registry.aliases_of(model) if row.alias == alias), None)
        answer.update(at=None, version=current.version.number if current else None)
    return jsonify(answer)


@bp.post("/models/<name>/gates")
def add_gate(name: str):
    body, error = _body(gates.GATE_FIELDS)
    if error:
        return error
    gate = gates.add_gate(registry.model_or_404(name), body, current_actor())
    return jsonify(serializers.model_gate(gate, gates.describe(gate))), 201


@bp.delete("/models/<name>/gates/<gate_id>")
def delete_gate(name: str, gate_id: str):
    model = registry.model_or_404(name)
    gates.delete_gate(model, gates.gate_or_404(model, gate_id), current_actor())
    return "", 204


@bp.get("/tunix/runs/<run_id>/gates")
def run_gates(run_id: str):
    """The verdicts of the gates of the model a run competes for; `passed` is null until it has them all."""
    run = run_or_404(run_id)
    verdicts = gates.verdicts_of(run)
    return jsonify({"run_id": str(run.id), "status": run.status, "candidate_for": gates.candidate_for(run),
                    "passed": all(v.passed for v in verdicts) if verdicts else None,
                    "verdicts": [serializers.gate_verdict(v) for v in verdicts]})
