"""The registry's pages: the models, a model (versions, aliases and their history, gates, the score chart),
a version (lineage, runs trained from it, files), and the forms that register, move aliases and set gates."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, redirect, render_template, request, stream_with_context, url_for

from app.artifacts import archives
from app.artifacts.model_store import ModelStore
from app.artifacts.store import StoreError, StoreSettings
from app.errors import (AppError, ConflictError, ForbiddenError, NotFoundError, StoreUnreachable,
                        ValidationError)
from app.extensions import db
from app.playground import service as playground
from app.registry import gates, queries as registry_queries, service as registry
from app.web.auth import current_actor
from app.web.lookups import run_or_404, whole_number_arg
from app.web.model_api import when_of

bp = Blueprint("models", __name__, url_prefix="/models")

VERSIONS_PER_PAGE = 50
CHART_METRICS = ("answer_match", "exact_match", "final_eval_loss")


@bp.get("")
def list_models():
    return render_template("models/list.html", rows=registry_queries.list_models())


def _model_context(model, errors: dict | None = None, values: dict | None = None) -> dict:
    offset = whole_number_arg("offset", minimum=0, default=0)
    metric = request.args.get("metric") if request.args.get("metric") in CHART_METRICS else "answer_match"
    at = request.args.get("at", "").strip()
    champion_at = None
    if at:
        try:
            when = when_of(at)
            move = registry.alias_at(model, request.args.get("alias", "champion").strip() or "champion", when)
            champion_at = {"when": when, "move": move}
        except ValidationError as exc:
            errors = {**(errors or {}), **exc.details}
    actor = current_actor()
    return {"model": model, "versions": registry_queries.versions_page(model, offset, VERSIONS_PER_PAGE),
            "total": registry_queries.version_count(model), "offset": offset, "per_page": VERSIONS_PER_PAGE,
            "aliases": registry.aliases_of(model), "history": registry.alias_history(model, limit=100),
            "gates": [(g, gates.describe(g)) for g in gates.gates_of(model)],
            "metric": metric, "metrics": CHART_METRICS,
            "champion_at": champion_at, "at": at, "at_alias": request.args.get("alias", "champion"),
            "may_change": actor.may_change(model.owner_id), "is_admin": actor.is_admin,
            "chart": score_chart(registry_queries.score_series(model, metric)),
            "errors": errors or {}, "values": values or {}, "form_error": None}


CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 640, 180, 28


def score_chart(series: list[tuple[int, float]]) -> dict | None:
    """The score-by-version chart's geometry: the line's points and the axis' ends, in SVG units."""
    if not series:
        return None
    numbers = [n for n, _ in series]
    values = [v for _, v in series]
    low, high = min(values), max(values)
    spread = (high - low) or 1.0
    first, last = numbers[0], numbers[-1]
    span = (last - first) or 1

    def x(n: int) -> float:
        return round(CHART_PAD + (n - first) / span * (CHART_WIDTH - 2 * CHART_PAD), 1)

    def y(v: float) -> float:
        return round(CHART_HEIGHT - CHART_PAD - (v - low) / spread * (CHART_HEIGHT - 2 * CHART_PAD), 1)

    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "pad": CHART_PAD, "low": low, "high": high,
            "first": first, "last": last, "points": " ".join(f"{x(n)},{y(v)}" for n, v in series),
            "marks": [(x(n), y(v), n, v) for n, v in series[-50:]]}


@bp.get("/<name>")
def show_model(name: str):
    return render_template("models/detail.html", **_model_context(registry.model_or_404(name)))


def _refused(model, exc: AppError, values: dict) -> tuple[str, int]:
    context = _model_context(model, dict(exc.details), values)
    context["form_error"] = None if isinstance(exc, ValidationError) else exc.message
    return render_template("models/detail.html", **context), exc.status


@bp.post("/<name>/aliases")
def move_alias(name: str):
    model = registry.model_or_404(name)
    values = {k: request.form.get(k, "") for k in ("alias", "version", "reason")}
    values["override"] = request.form.get("override") == "1"
    try:
        registry.move_alias(model, values["alias"], values["version"], current_actor(), reason=values["reason"],
                            override=values["override"])
    except (ValidationError, ConflictError, ForbiddenError) as exc:
        db.session.rollback()  # the refused change's locks go before the page renders
        return _refused(model, exc, values)
    return redirect(url_for("models.show_model", name=model.name), code=303)


@bp.post("/<name>/gates")
def add_gate(name: str):
    model = registry.model_or_404(name)
    fields = ("metric", "direction", "eval_dataset_key", "floor", "max_drop", "drop_kind", "baseline_alias",
              "confidence_z")
    values = {k: request.form.get(k, "").strip() for k in fields}
    try:
        gates.add_gate(model, {k: v for k, v in values.items() if v != ""}, current_actor())
    except (ValidationError, ForbiddenError) as exc:
        db.session.rollback()
        return _refused(model, exc, {f"gate_{k}": v for k, v in values.items()})
    return redirect(url_for("models.show_model", name=model.name) + "#gates", code=303)


@bp.post("/<name>/gates/<gate_id>/delete")
def delete_gate(name: str, gate_id: str):
    model = registry.model_or_404(name)
    gates.delete_gate(model, gates.gate_or_404(model, gate_id), current_actor())
    return redirect(url_for("models.show_model", name=model.name) + "#gates", code=303)


@bp.get("/<name>/versions/<number>")
def show_version(name: str, number: str):
    model = registry.model_or_404(name)
    version = registry.version_or_404(model, number)
    return render_template("models/version.html", model=model, version=version,
                           chain=registry_queries.lineage_chain(version),
                           trained=registry_queries.trained_from(version),
                           aliases=[a.alias for a in registry.aliases_of(model) if a.version_id == version.id],
                           may_change=current_actor().may_change(model.owner_id), error=request.args.get("error"),
                           asked=playground.asked_count(playground.key_of_version(version)))


@bp.post("/<name>/versions/<number>/archive")
def archive_version(name: str, number: str):
    version = registry.version_or_404(registry.model_or_404(name), number)
    try:
        registry.archive(version, current_actor())
    except ConflictError as exc:
        db.session.rollback()
        return redirect(url_for("models.show_version", name=name, number=version.number, error=exc.message), code=303)
    return redirect(url_for("models.show_version", name=name, number=version.number), code=303)


@bp.get("/<name>/versions/<number>/files/<path:relative>")
def download_file(name: str, number: str, relative: str):
    """One file of a version, streamed from the registry's blobs and checked against its SHA-256 as it goes."""
    version = registry.version_or_404(registry.model_or_404(name), number)
    file = next((f for f in version.files if f["path"] == relative), None)
    if file is None:
        raise NotFoundError(f"version {version.number} of {name} has no file {relative[:200]!r}")
    store = ModelStore(StoreSettings.from_config(current_app.config), version.store_url)
    body = store.stream(file)
    try:
        first = next(body, b"")  # an unreachable store is an error page, not a broken download
    except StoreError as exc:
        raise StoreUnreachable(f"the file could not be read from the store: {exc}") from None

    def chunks():
        yield first
        yield from body

    filename = relative.rsplit("/", 1)[-1].replace('"', "")
    return Response(stream_with_context(chunks()), mimetype="application/octet-stream",
                    headers={"Content-Length": str(file["size"]), "ETag": f'"{file["sha256"]}"',
                             "Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/<name>/versions/<number>/archive.zip")
def download_version(name: str, number: str):
    """The whole version as one zip (a checkpoint folder once unpacked), made from the store as it streams,
    each file checked against its SHA-256 as it goes."""
    version = registry.version_or_404(registry.model_or_404(name), number)
    store = ModelStore(StoreSettings.from_config(current_app.config), version.store_url)
    prefix = f"{version.model.name}-v{version.number}"
    members = ((f"{prefix}/{f['path']}", lambda file=f: store.stream(file)) for f in version.files)
    return Response(stream_with_context(archives.stream_zip(members)), mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{prefix}.zip"'})


@bp.route("/register/<run_id>", methods=["GET", "POST"])
def register_run(run_id: str):
    """Register a completed run's model: a new or existing name, and optionally an alias."""
    run = run_or_404(run_id)
    values = {"name": request.form.get("name", ""), "alias": request.form.get("alias", ""),
              "description": request.form.get("description", "")}
    if request.method == "POST":
        try:
            found = registry.register(run, values["name"], current_actor(), alias=values["alias"] or None,
                                      description=values["description"])
            return redirect(url_for("models.show_version", name=found.version.model.name,
                                    number=found.version.number), code=303)
        except AppError as exc:
            db.session.rollback()
            return render_template("models/register.html", run=run, values=values, errors=dict(exc.details),
                                   form_error=None if isinstance(exc, ValidationError) else exc.message,
                                   names=registry_queries.model_names()), exc.status
    return render_template("models/register.html", run=run, values=values, errors={},
                           names=registry_queries.model_names())
