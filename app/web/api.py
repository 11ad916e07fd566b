"""The JSON API: submit runs in three modes, read them back, manage datasets, health."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, request, url_for
from sqlalchemy import text

from app import datasets, run_logs, run_queries, run_service, worker_registry
from app.extensions import db
from app.run_launcher import carry_out_in_request
from app.run_states import DEFAULT_MODE, MODES, STATUSES

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_PAGE_LIMIT = 200
MAX_IDEMPOTENCY_KEY = 255


def api_error(status: int, message: str, details: dict[str, str] | None = None):
    """The one shape of every API error: {"error": ..., "details": {field: message}}."""
    return jsonify({"error": message, "details": details or {}}), status


def _whole_number_arg(name: str, minimum: int, maximum: int | None = None,
                      default: int | None = None) -> tuple[int | None, str | None]:
    """A whole-number query argument within bounds: (value, None), or (None, what is wrong)."""
    raw = request.args.get(name)
    if raw is None:
        return default, None
    bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of {minimum} or more"
    try:
        value = int(raw)
    except ValueError:
        return None, f"must be a whole number {bounds}"
    if value < minimum or (maximum is not None and value > maximum):
        return None, f"must be a whole number {bounds}"
    return value, None


def _json_object():
    """The request body as a dict, or an API error response when it is not one."""
    if not request.data:
        return None, api_error(400, "request body must be a JSON object", {"body": "is empty"})
    body = request.get_json(silent=True, force=True)
    if body is None:
        return None, api_error(400, "malformed JSON", {"body": "is not valid JSON"})
    if not isinstance(body, dict):
        return None, api_error(400, "request body must be a JSON object", {"body": "must be a JSON object"})
    return body, None


@bp.post("/tunix/run")
def submit_run():
    mode = request.args.get("mode", DEFAULT_MODE)
    if mode not in MODES:
        return api_error(400, "invalid mode", {"mode": f"must be one of {', '.join(MODES)}, got {mode!r}"})
    body, error = _json_object()
    if error:
        return error
    idempotency_key = request.headers.get("Idempotency-Key", "").strip() or None
    if idempotency_key and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
        return api_error(422, "invalid Idempotency-Key",
                         {"Idempotency-Key": f"must be at most {MAX_IDEMPOTENCY_KEY} characters"})
    try:
        run, created = run_service.submit_run(body, mode, idempotency_key)
    except run_service.RunSubmissionError as exc:
        return api_error(422, "invalid run configuration", exc.details)
    except run_service.IdempotencyConflict as exc:
        return api_error(409, "Idempotency-Key already used for a different submission",
                         {"Idempotency-Key": f"belongs to run {exc.run.id}"})
    if created and mode != "async":
        run = carry_out_in_request(run)
    location = url_for("api.get_run", run_id=run.id)
    headers = {"Location": location}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    if mode == "async":
        return jsonify({"run_id": str(run.id), "status": run.status}), 202, headers
    return jsonify(run_queries.run_to_dict(run)), 200, headers


def _run_or_404(run_id: str):
    run = run_queries.get_run(run_id)
    if run is None:
        abort(404, description=f"no run with id {run_id!r}")
    return run


@bp.get("/tunix/runs/<run_id>/status")
def get_run_status(run_id: str):
    return jsonify(run_queries.run_to_status_dict(_run_or_404(run_id)))


@bp.get("/tunix/runs/<run_id>")
def get_run(run_id: str):
    return jsonify(run_queries.run_to_dict(_run_or_404(run_id)))


@bp.get("/tunix/runs/<run_id>/metrics")
def get_run_metrics(run_id: str):
    """The metric series; ?max_points=N thins each series to about N evenly spaced points."""
    run = _run_or_404(run_id)
    max_points, problem = _whole_number_arg("max_points", minimum=2)
    if problem:
        return api_error(422, "invalid query", {"max_points": problem})
    return jsonify({"run_id": str(run.id), "status": run.status, "progress": run.progress,
                    **run_queries.metric_series(run.id, max_points)})


@bp.post("/tunix/runs/<run_id>/cancel")
def cancel_run(run_id: str):
    """Pending runs are cancelled at once (200); running ones become cancelling (202)."""
    try:
        run = run_service.cancel_run(_run_or_404(run_id))
    except run_service.RunConflict as exc:
        return api_error(409, str(exc), {"status": "is terminal"})
    body = {"run_id": str(run.id), "status": run.status, "error_message": run.error_message}
    return jsonify(body), (200 if run.status == "cancelled" else 202)


@bp.post("/tunix/runs/<run_id>/retry")
def retry_run(run_id: str):
    """A new run with the same config, linked to the original (async; dry runs re-plan at once)."""
    original = _run_or_404(run_id)
    try:
        run = run_service.retry_run(original)
    except run_service.RunConflict as exc:
        return api_error(409, str(exc), {"status": "is not terminal"})
    except run_service.RunSubmissionError as exc:
        return api_error(422, "the original config is no longer valid", exc.details)
    if run.mode == "dry_run":
        run = carry_out_in_request(run)
    body = {"run_id": str(run.id), "status": run.status, "retry_of": str(original.id)}
    return jsonify(body), 202 if run.mode == "async" else 200, {"Location": url_for("api.get_run", run_id=run.id)}


@bp.get("/tunix/runs/<run_id>/logs")
def get_run_logs(run_id: str):
    """Stored output: the tail, or with ?after=SEQ the lines after that chunk."""
    run = _run_or_404(run_id)
    after, problem = _whole_number_arg("after", minimum=0)
    if problem:
        return api_error(422, "invalid query", {"after": problem})
    max_lines = current_app.config["LOG_TAIL_LINES"]
    piece = run_logs.tail(run.id, max_lines) if after is None else run_logs.after(run.id, after, max_lines)
    return jsonify({"run_id": str(run.id), "lines": [{"stream": s, "text": t} for s, t in piece.lines],
                    "next_after": piece.last_seq, "log_bytes": run.log_bytes})


@bp.get("/workers")
def list_workers():
    _, workers = worker_registry.workers_with_liveness(current_app.config["LEASE_TIMEOUT_SECONDS"])
    return jsonify({"workers": [{
        "id": w.id, "host": w.host, "pid": w.pid, "state": w.state, "started_at": w.started_at.isoformat(),
        "last_seen_at": w.last_seen_at.isoformat(), "current_run_id": str(w.current_run_id) if w.current_run_id else None,
        "runs_done": w.runs_done, "alive": alive,
    } for w, alive in workers]})


def _list_filters() -> tuple[dict, dict[str, str]]:
    args, errors = request.args, {}
    filters = {"status": args.get("status") or None, "mode": args.get("mode") or None,
               "dataset_key": args.get("dataset_key") or None, "cursor": args.get("cursor") or None}
    if filters["status"] and filters["status"] not in STATUSES:
        errors["status"] = f"must be one of {', '.join(STATUSES)}"
    if filters["mode"] and filters["mode"] not in MODES:
        errors["mode"] = f"must be one of {', '.join(MODES)}"
    filters["limit"], problem = _whole_number_arg("limit", minimum=1, maximum=MAX_PAGE_LIMIT, default=25)
    if problem:
        errors["limit"] = problem
    if filters["cursor"]:
        try:
            run_queries.decode_cursor(filters["cursor"])
        except ValueError as exc:
            errors["cursor"] = str(exc)
    return filters, errors


@bp.get("/tunix/runs")
def list_runs():
    filters, errors = _list_filters()
    if errors:
        return api_error(422, "invalid query", errors)
    page = run_queries.list_runs(**filters)
    return jsonify({"runs": [run_queries.run_to_summary_dict(r) for r in page.runs],
                    "next_cursor": page.next_cursor})


@bp.get("/datasets")
def list_datasets():
    return jsonify({"datasets": [datasets.dataset_to_dict(d) for d in datasets.list_datasets()]})


def _examples_from_request() -> tuple[str | None, str, list]:
    """(name, description, examples) from a JSON body or a multipart upload; raises DatasetError."""
    if request.files or request.form:
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise datasets.DatasetError({"file": "is required (a .jsonl file)"})
        return request.form.get("name"), request.form.get("description", ""), datasets.parse_jsonl(upload.read())
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise datasets.DatasetError({"body": "must be a JSON object with name and examples (or jsonl)"})
    name = body.get("name") if isinstance(body.get("name"), str) else None
    description = body.get("description") if isinstance(body.get("description"), str) else ""
    datasets.check_name(name)
    if "jsonl" in body:
        if not isinstance(body["jsonl"], str):
            raise datasets.DatasetError({"jsonl": "must be a string of JSON lines"})
        return name, description, datasets.parse_jsonl(body["jsonl"])
    if "examples" not in body:
        raise datasets.DatasetError({"examples": "is required (or give jsonl)"})
    return name, description, datasets.parse_example_list(body["examples"])


@bp.post("/datasets")
def create_dataset():
    if not request.data and not request.files and not request.form:
        return api_error(400, "request body must be a JSON object or a multipart upload", {"body": "is empty"})
    if request.is_json and request.get_json(silent=True) is None:
        return api_error(400, "malformed JSON", {"body": "is not valid JSON"})
    try:
        name, description, examples = _examples_from_request()
        dataset = datasets.create_dataset(name, examples, description)
    except datasets.DatasetError as exc:
        return api_error(422, "invalid dataset", exc.details)
    return jsonify(datasets.dataset_to_dict(dataset)), 201, {
        "Location": url_for("api.get_dataset", key=dataset.key)}


@bp.get("/datasets/<key>")
def get_dataset(key: str):
    dataset = datasets.get_dataset(key)
    if dataset is None:
        abort(404, description=f"no dataset with key {key!r}")
    preview = [{"prompt": e.prompt, "response": e.response} for e in datasets.preview_examples(key, 5)]
    return jsonify({**datasets.dataset_to_dict(dataset), "preview": preview})


@bp.get("/health")
def health():
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except Exception as exc:  # any failure to reach the database is reported, not raised
        db.session.rollback()
        return jsonify({"status": "unavailable", "database": f"unreachable: {type(exc).__name__}"}), 503
    return jsonify({"status": "ok", "database": "ok"})
