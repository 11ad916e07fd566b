"""The HTML pages: runs (list, new, detail, status fragment, artifacts) and datasets."""
from __future__ import annotations

from datetime import datetime, timezone


from flask import (Blueprint, Response, abort, current_app, redirect, render_template, request,
                   send_from_directory, stream_with_context, url_for)

from app import (artifacts, datasets, loss_chart, model_catalog, run_config, run_logs, run_queries, run_service,
                 worker_registry)
from app.run_launcher import carry_out_in_request
from app.run_states import MODES, STATUSES, TERMINAL_STATUSES
from app.sample_dataset import SAMPLE_KEY

bp = Blueprint("pages", __name__)


def template_globals() -> dict:
    return {"STATUSES": STATUSES, "MODES": MODES, "TERMINAL_STATUSES": TERMINAL_STATUSES,
            "format_duration": format_duration, "format_bytes": format_bytes, "format_time": format_time}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def format_bytes(size: int | None) -> str:
    if size is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def format_time(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


@bp.get("/")
def index():
    return redirect(url_for("pages.list_runs"))


@bp.get("/runs")
def list_runs():
    filters = {k: request.args.get(k) or None for k in ("status", "mode", "dataset_key", "cursor")}
    errors = {}
    if filters["status"] and filters["status"] not in STATUSES:
        errors["status"] = "unknown status"
        filters["status"] = None
    if filters["mode"] and filters["mode"] not in MODES:
        errors["mode"] = "unknown mode"
        filters["mode"] = None
    try:
        page = run_queries.list_runs(limit=current_app.config["RUNS_PAGE_SIZE"], **filters)
    except ValueError:
        errors["cursor"] = "that page link is no longer valid; showing the newest runs"
        filters["cursor"] = None
        page = run_queries.list_runs(limit=current_app.config["RUNS_PAGE_SIZE"], **filters)
    return render_template("runs/list.html", page=page, filters=filters, errors=errors,
                           datasets=datasets.list_datasets())


def _form_context(values: dict, errors: dict) -> dict:
    return {"values": values, "errors": errors, "fields": run_config.FIELDS, "presets": model_catalog.PRESETS,
            "datasets": datasets.list_datasets()}


@bp.get("/runs/new")
def new_run():
    values = run_config.form_defaults()
    values.update(dataset_key=request.args.get("dataset_key") or SAMPLE_KEY, mode="async")
    source = run_queries.get_run(request.args.get("clone", "")) if request.args.get("clone") else None
    if source is not None:
        values.update({k: ("" if v is None else v) for k, v in source.config.items()}, mode=source.mode)
    return render_template("runs/new.html", **_form_context(values, {}))


@bp.post("/runs/new")
def submit_run():
    values = {k: v for k, v in request.form.items() if k != "csrf_token"}
    mode = values.pop("mode", "sync")
    errors: dict[str, str] = {}
    try:
        run, _ = run_service.submit_run(values, mode)
    except run_service.RunSubmissionError as exc:
        errors = exc.details
    if errors:
        return render_template("runs/new.html", **_form_context({**values, "mode": mode}, errors)), 422
    if mode != "async":
        carry_out_in_request(run)
    return redirect(url_for("pages.show_run", run_id=run.id), code=303)


def _run_or_404(run_id: str):
    run = run_queries.get_run(run_id)
    if run is None:
        abort(404, description=f"No run with id {run_id}.")
    return run


def _worker_note(run) -> str | None:
    """Why a pending run waits, when the reason is that no worker is around."""
    if run.status != "pending":
        return None
    quiet = worker_registry.seconds_since_any_worker()
    if quiet is None:
        return "No worker is running: start one with `python worker.py`."
    config = current_app.config
    if quiet > max(3 * config["HEARTBEAT_SECONDS"], 2 * config["WORKER_POLL_SECONDS"]):
        return f"No worker has been seen for {quiet:.0f} s."
    return None


def _status_context(run, log_after: int | None = None) -> dict:
    series = run_queries.metric_series(run.id, max_points=loss_chart.MAX_POINTS)
    max_lines = current_app.config["LOG_TAIL_LINES"]
    log = run_logs.tail(run.id, max_lines) if log_after is None else run_logs.after(run.id, log_after, max_lines)
    return {"run": run, "series": series, "chart": loss_chart.render_svg(series),
            "queue_position": run_queries.queue_position(run), "worker_note": _worker_note(run), "log": log}


@bp.get("/runs/<run_id>")
def show_run(run_id: str):
    run = _run_or_404(run_id)
    files = artifacts.list_files(current_app.config["ARTIFACTS_ROOT"], run.id)
    return render_template("runs/detail.html", files=files, retries=run_queries.retries_of(run.id),
                           **_status_context(run))


@bp.get("/runs/<run_id>/status")
def run_status_fragment(run_id: str):
    """The fragment the run page polls; it stops polling itself once the run is terminal.

    With ?log_after=SEQ it also carries the output stored since that chunk, appended
    to the page's log out of band.
    """
    run = _run_or_404(run_id)
    try:
        log_after = max(0, int(request.args.get("log_after", "")))
    except ValueError:
        log_after = None
    return render_template("runs/_status.html", log_increment=log_after is not None,
                           **_status_context(run, log_after))


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str):
    try:
        run_service.cancel_run(_run_or_404(run_id))
    except run_service.RunConflict as exc:
        abort(409, description=str(exc))
    return redirect(url_for("pages.show_run", run_id=run_id), code=303)


@bp.post("/runs/<run_id>/retry")
def retry_run(run_id: str):
    try:
        run = run_service.retry_run(_run_or_404(run_id))
    except run_service.RunConflict as exc:
        abort(409, description=str(exc))
    except run_service.RunSubmissionError as exc:
        abort(422, description="The original config is no longer valid: " +
              "; ".join(f"{k}: {v}" for k, v in exc.details.items()))
    if run.mode == "dry_run":
        carry_out_in_request(run)
    return redirect(url_for("pages.show_run", run_id=run.id), code=303)


@bp.get("/runs/<run_id>/log.txt")
def download_log(run_id: str):
    run = _run_or_404(run_id)
    return Response(stream_with_context(run_logs.full_text(run.id)), mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="run-{run.id}.log"'})


@bp.get("/workers")
def list_workers():
    now, workers = worker_registry.workers_with_liveness(current_app.config["LEASE_TIMEOUT_SECONDS"])
    return render_template("workers.html", workers=workers, now=now)


@bp.get("/runs/<run_id>/artifacts/<path:relative>")
def download_artifact(run_id: str, relative: str):
    run = _run_or_404(run_id)
    run_dir = artifacts.resolve_file(current_app.config["ARTIFACTS_ROOT"], run.id, relative)
    if run_dir is None:
        abort(404, description="No such file in this run's artifacts.")
    return send_from_directory(run_dir.parent, run_dir.name, as_attachment=True)


@bp.get("/datasets")
def list_datasets():
    return render_template("datasets/list.html", datasets=datasets.list_datasets(), errors={}, values={})


@bp.post("/datasets")
def upload_dataset():
    values = {"name": request.form.get("name", ""), "description": request.form.get("description", "")}
    upload = request.files.get("file")
    try:
        datasets.check_name(values["name"])
        if upload is None or not upload.filename:
            raise datasets.DatasetError({"file": "choose a .jsonl file to upload"})
        examples = datasets.parse_jsonl(upload.read())
        dataset = datasets.create_dataset(values["name"], examples, values["description"])
    except datasets.DatasetError as exc:
        return render_template("datasets/list.html", datasets=datasets.list_datasets(), errors=exc.details,
                               values=values), 422
    return redirect(url_for("pages.show_dataset", key=dataset.key), code=303)


@bp.get("/datasets/<key>")
def show_dataset(key: str):
    dataset = datasets.get_dataset(key)
    if dataset is None:
        abort(404, description=f"No dataset with key {key}.")
    return render_template("datasets/detail.html", dataset=dataset,
                           examples=datasets.preview_examples(key, 20))


