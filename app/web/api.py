"""The JSON API: submit runs in three modes, read them back, manage datasets, health.

Refusals raised by the services (`app.errors`) become JSON errors in `app.web.errors`.
"""
from __future__ import annotations

import uuid

from flask import Blueprint, current_app, jsonify, request, url_for
from sqlalchemy import text

from app.datasets import parsing, store as dataset_store
from app.change_feed import RUNS, FeedCache
from app.errors import NotFoundError, ValidationError, echo
from app.execution.launcher import retry_and_carry_out, submit_and_carry_out
from app.extensions import db
from app.queue import registry
from app.runs import comparison, counts, evaluation, logs, queries, service, validation
from app.run_states import ASYNC, CANCELLED, DEFAULT_MODE, MODES, PENDING, RUNNING, STATUSES
from app.sweeps import queries as sweep_queries, service as sweep_service
from app.web import downloads, openapi, serializers
from app.web.auth import current_actor
from app.web.formatting import PREVIEW_CHARS
from app.web.lookups import upload_limits
from app.web.errors import api_error
from app.web.lookups import dataset_or_404, run_or_404, sweep_or_404, whole_number_arg

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_PAGE_LIMIT = 200
MAX_IDEMPOTENCY_KEY = 200  # stored behind its sender's id, in 255 characters
MAX_POINTS_ARG = 100_000


UNSUPPORTED_BODY = "request body must be sent as application/json"


def _json_object():
    """The request body as a dict, or an API error response when it is not one.

    Only an application/json body is read: a cross-site form or a no-cors fetch can send
    text/plain without a preflight, never application/json.
    """
    if not request.data:
        return None, api_error(400, "request body must be a JSON object", {"body": "is empty"})
    if request.mimetype != "application/json":
        return None, api_error(415, UNSUPPORTED_BODY, {"Content-Type": "must be application/json"})
    body = request.get_json(silent=True)
    if body is None:
        return None, api_error(400, "malformed JSON", {"body": "is not valid JSON"})
    if not isinstance(body, dict):
        return None, api_error(400, "request body must be a JSON object", {"body": "must be a JSON object"})
    return body, None


@bp.post("/tunix/run")
def submit_run():
    mode = request.args.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        return api_error(400, "invalid mode", {"mode": f"must be one of {', '.join(MODES)}, got {echo(mode)}"})
    body, error = _json_object()
    if error:
        return error
    idempotency_key = request.headers.get("Idempotency-Key", "").strip() or None
    if idempotency_key and (len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable()):
        raise ValidationError("invalid Idempotency-Key", {"Idempotency-Key": f"must be at most {MAX_IDEMPOTENCY_KEY} "
                                                                           "printable characters"})
    run, created = submit_and_carry_out(body, mode, current_actor(), idempotency_key)
    headers = {"Location": url_for("api.get_run", run_id=run.id)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    if mode == ASYNC:
        return jsonify({"run_id": str(run.id), "status": run.status}), 202, headers
    return jsonify(serializers.run_detail(run, queries.retries_of(run.id))), 200, headers


# Scripts poll this; the payload changes only when the run's version does (app.change_feed).
_statuses = FeedCache(RUNS, size=20_000)


@bp.get("/tunix/runs/<run_id>/status")
def get_run_status(run_id: str):
    try:
        key = str(uuid.UUID(run_id))
    except ValueError:
        raise NotFoundError(f"no run with id {run_id!r}") from None

    def read() -> dict:
        row = queries.status_row(key)
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return serializers.run_status(row)

    return jsonify(_statuses.get(key, read))


@bp.get("/tunix/runs/<run_id>")
def get_run(run_id: str):
    run = run_or_404(run_id)
    return jsonify(serializers.run_detail(run, queries.retries_of(run.id)))


@bp.get("/tunix/runs/<run_id>/metrics")
def get_run_metrics(run_id: str):
    """The metric series; ?max_points=N thins each series to about N evenly spaced points."""
    run = run_or_404(run_id)
    max_points = whole_number_arg("max_points", minimum=2, maximum=MAX_POINTS_ARG)
    return jsonify({"run_id": str(run.id), "status": run.status, "progress": run.progress,
                    **queries.metric_series(run.id, max_points)})


@bp.get("/tunix/runs/<run_id>/evaluation")
def get_run_evaluation(run_id: str):
    """Scores before and after training, and one page of the scored answers (?phase=, offset=, limit=)."""
    run = run_or_404(run_id)
    phase = request.args.get("phase", "after")
    if phase not in evaluation.PHASES:
        raise ValidationError("invalid query", {"phase": f"must be one of {', '.join(evaluation.PHASES)}"})
    offset = whole_number_arg("offset", minimum=0, default=0)
    limit = whole_number_arg("limit", minimum=1, maximum=MAX_PAGE_LIMIT, default=50)
    page = evaluation.predictions(run.id, phase, offset, limit)
    following = offset + len(page.items)
    return jsonify({"run_id": str(run.id), "status": run.status, "evaluation": evaluation.of(run.result),
                    "progress": {k: v for k, v in (run.progress or {}).items()
                                 if k in ("evaluating", "evaluation_before", "evaluation_after")},
                    "phase": phase, "total": page.total, "offset": offset,
                    "next_offset": following if following < page.total else None,
                    "examples": [serializers.prediction(p) for p in page.items]})


@bp.get("/tunix/runs/compare")
def compare_runs():
    """2 to 8 runs side by side: loss series, differing config values, metrics with the best marked."""
    found = comparison.compare(comparison.parse_ids(request.args.getlist("ids")), max_points=400)
    return jsonify({
        "runs": [serializers.run_summary(run) for run in found.runs],
        "series": {str(run.id): series for run, series in zip(found.runs, found.series)},
        "config_differences": {key: values for key, values in found.config_differences},
        "metrics": [{"key": row.key, "label": row.label, "values": row.values, "better": row.better,
                     "best": [str(found.runs[i].id) for i in sorted(row.best)]} for row in found.metrics],
        "warnings": found.warnings})


@bp.post("/tunix/runs/<run_id>/cancel")
def cancel_run(run_id: str):
    """Pending runs are cancelled at once (200); running ones become cancelling (202)."""
    run = service.cancel_run(run_or_404(run_id), current_actor())
    body = {"run_id": str(run.id), "status": run.status, "error_message": run.error_message}
    return jsonify(body), (200 if run.status == CANCELLED else 202)


@bp.post("/tunix/runs/<run_id>/retry")
def retry_run(run_id: str):
    """A new run with the same config, linked to the original (async; dry runs re-plan at once)."""
    original = run_or_404(run_id)
    run = retry_and_carry_out(original, current_actor())
    body = {"run_id": str(run.id), "status": run.status, "retry_of": str(original.id)}
    return jsonify(body), 202 if run.mode == ASYNC else 200, {"Location": url_for("api.get_run", run_id=run.id)}


@bp.get("/tunix/runs/<run_id>/logs")
def get_run_logs(run_id: str):
    """Stored output: the tail, or with ?after=SEQ the lines after that chunk."""
    run = run_or_404(run_id)
    after = whole_number_arg("after", minimum=0)
    max_lines = current_app.config["LOG_TAIL_LINES"]
    piece = logs.tail(run.id, max_lines) if after is None else logs.after(run.id, after, max_lines)
    return jsonify({"run_id": str(run.id), "lines": [{"stream": s, "text": t} for s, t in piece.lines],
                    "next_after": piece.last_seq, "log_bytes": run.log_bytes})


@bp.get("/tunix/runs/<run_id>/artifacts")
def list_run_artifacts(run_id: str):
    """The run's stored files: path, size and SHA-256 of each (what a script fetches and checks)."""
    return jsonify(downloads.listing(run_or_404(run_id)))


@bp.get("/tunix/runs/<run_id>/artifacts/<path:path>")
def download_run_artifact(run_id: str, path: str):
    """One stored file, as the run page serves it (Range requests; a presigned URL when the server says so)."""
    return downloads.file_response(run_or_404(run_id), path)


@bp.get("/workers")
def list_workers():
    _, workers = registry.fleet(current_app.config["LEASE_TIMEOUT_SECONDS"])
    return jsonify({"workers": [serializers.worker(view) for view in workers]})


@bp.get("/tunix/status")
def fleet_status():
    """The fleet: each worker's devices free and busy and its versions, the totals, and the queue."""
    _, workers = registry.fleet(current_app.config["LEASE_TIMEOUT_SECONDS"])
    live = [view for view in workers if view.alive]
    sizes = [len(view.row.devices or []) for view in live]
    runs, _ = counts.read()
    return jsonify({
        "workers": [serializers.worker(view) for view in workers],
        "devices": {"total": sum(sizes), "busy": sum(len(view.busy_device_ids) for view in live),
                    "free": sum(len(view.free_device_ids) for view in live)},
        "largest_live_worker_devices": max(sizes, default=None),
        "runs": {status: sum(n for (s, _), n in runs.items() if s == status) for status in (PENDING, RUNNING)},
    })


def _list_filters() -> dict:
    """The list's filters from the query string; ValidationError naming every bad one."""
    args, errors = request.args, {}
    filters = {"status": args.get("status") or None, "mode": args.get("mode") or None,
               "dataset_key": args.get("dataset_key") or None, "tag": args.get("tag") or None,
               "user": args.get("user") or None,
               "cursor": args.get("cursor") or None}
    if filters["tag"] and not validation.TAG_PATTERN.match(filters["tag"]):
        errors["tag"] = "must be 1-32 letters, digits, '.', '_', ':' or '-'"
    if filters["status"] and filters["status"] not in STATUSES:
        errors["status"] = f"must be one of {', '.join(STATUSES)}"
    if filters["mode"] and filters["mode"] not in MODES:
        errors["mode"] = f"must be one of {', '.join(MODES)}"
    try:
        filters["limit"] = whole_number_arg("limit", minimum=1, maximum=MAX_PAGE_LIMIT, default=25)
    except ValidationError as exc:
        errors.update(exc.details)
    if filters["cursor"]:
        try:
            queries.decode_cursor(filters["cursor"])
        except ValueError as exc:
            errors["cursor"] = str(exc)
    if errors:
        raise ValidationError("invalid query", errors)
    return filters


@bp.get("/tunix/runs")
def list_runs():
    page = queries.list_runs(**_list_filters())
    return jsonify({"runs": [serializers.run_summary(r) for r in page.runs], "next_cursor": page.next_cursor})


@bp.get("/datasets")
def list_datasets():
    return jsonify({"datasets": [serializers.dataset(d) for d in dataset_store.list_datasets()]})


def _examples_from_request() -> tuple[str | None, str, list]:
    """(name, description, examples) from a JSON body or a multipart upload; raises ValidationError."""
    if request.files or request.form:
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise ValidationError(parsing.INVALID_DATASET, {"file": "is required (a .jsonl file)"})
        return (request.form.get("name"), request.form.get("description", ""),
                parsing.parse_jsonl(upload.stream, upload_limits()))
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError(parsing.INVALID_DATASET,
                              {"body": "must be a JSON object with name and examples (or jsonl)"})
    name = body.get("name") if isinstance(body.get("name"), str) else None
    description = body.get("description") if isinstance(body.get("description"), str) else ""
    parsing.check_name(name)
    if "jsonl" in body:
        if not isinstance(body["jsonl"], str):
            raise ValidationError(parsing.INVALID_DATASET, {"jsonl": "must be a string of JSON lines"})
        return name, description, parsing.parse_jsonl(body["jsonl"], upload_limits())
    if "examples" not in body:
        raise ValidationError(parsing.INVALID_DATASET, {"examples": "is required (or give jsonl)"})
    return name, description, parsing.parse_example_list(body["examples"], upload_limits())


@bp.get("/datasets/<key>/leaderboard")
def dataset_leaderboard(key: str):
    """Completed runs scored on this dataset, best first (?limit=, offset=)."""
    dataset = dataset_or_404(key)
    offset = whole_number_arg("offset", minimum=0, default=0)
    limit = whole_number_arg("limit", minimum=1, maximum=MAX_PAGE_LIMIT, default=50)
    runs = evaluation.leaderboard(dataset.key, limit, offset)
    return jsonify({"dataset_key": dataset.key, "offset": offset,
                    "runs": [serializers.leaderboard_entry(offset + i + 1, run) for i, run in enumerate(runs)]})


@bp.post("/datasets")
def create_dataset():
    if not request.data and not request.files and not request.form:
        return api_error(400, "request body must be a JSON object or a multipart upload", {"body": "is empty"})
    if request.mimetype not in ("application/json", "multipart/form-data"):
        return api_error(415, "request body must be application/json or multipart/form-data",
                         {"Content-Type": "must be application/json or multipart/form-data"})
    if request.is_json and request.get_json(silent=True) is None:
        return api_error(400, "malformed JSON", {"body": "is not valid JSON"})
    name, description, examples = _examples_from_request()
    dataset = dataset_store.create_dataset(name, examples, description, created_by=current_actor().user_id)
    return jsonify(serializers.dataset(dataset)), 201, {"Location": url_for("api.get_dataset", key=dataset.key)}


@bp.get("/datasets/<key>")
def get_dataset(key: str):
    dataset = dataset_or_404(key)
    preview = [{"prompt": e.prompt[:PREVIEW_CHARS], "response": e.response[:PREVIEW_CHARS]}
               for e in dataset_store.preview_examples(key, 5)]
    return jsonify({**serializers.dataset(dataset), "preview": preview})


@bp.post("/sweeps")
def create_sweep():
    """A sweep: 201 with its id; its first trials are queued at once."""
    body, error = _json_object()
    if error:
        return error
    sweep = sweep_service.create_sweep(body, current_actor())
    return (jsonify({"sweep_id": str(sweep.id), "status": sweep.status}), 201,
            {"Location": url_for("api.get_sweep", sweep_id=sweep.id)})


@bp.get("/sweeps")
def list_sweeps():
    offset = whole_number_arg("offset", minimum=0, default=0)
    limit = whole_number_arg("limit", minimum=1, maximum=MAX_PAGE_LIMIT, default=50)
    return jsonify({"sweeps": [serializers.sweep_summary(s) for s in sweep_queries.list_sweeps(limit, offset)]})


@bp.get("/sweeps/<sweep_id>")
def get_sweep(sweep_id: str):
    sweep = sweep_or_404(sweep_id)
    return jsonify(serializers.sweep_detail(sweep, sweep_queries.trials(sweep.id)))


@bp.post("/sweeps/<sweep_id>/cancel")
def cancel_sweep(sweep_id: str):
    """Cancels the pending trials, stops the running ones, asks for nothing more; 409 once it ended."""
    sweep = sweep_service.cancel_sweep(sweep_or_404(sweep_id), current_actor())
    return jsonify({"sweep_id": str(sweep.id), "status": sweep.status})


_contract = openapi.document()


@bp.get("/openapi.json")
def openapi_document():
    """The API's contract, as an OpenAPI 3.1 document."""
    return jsonify(_contract)


@bp.get("/health")
def health():
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except Exception as exc:  # any failure to reach the database is reported, not raised
        db.session.rollback()
        return jsonify({"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"}), 503
    return jsonify({"status": "ok", "database": "ok"})
