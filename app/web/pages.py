"""The HTML pages: runs (list, new, detail, status fragment, artifacts), datasets and workers.

Refusals raised by the services (`app.errors`) become error pages in `app.web.errors`;
forms catch a ValidationError themselves to show each problem next to its field.
"""
from __future__ import annotations

import uuid

from flask import (Blueprint, Response, current_app, redirect, render_template, request, session,
                   stream_with_context, url_for)

from app.contract import model_catalog
from app.datasets import parsing, store as dataset_store
from app.datasets.sample import SAMPLE_KEY
from app.errors import ValidationError
from app.execution.launcher import retry_and_carry_out, submit_and_carry_out
from app.queue import registry as worker_registry
from app.registry import service as registry
from app.runs import comparison, evaluation, logs, queries, service, validation
from app.run_states import ASYNC, MODES, STATUSES, SYNC
from app.web import downloads, loss_chart, run_view
from app.web.auth import current_actor
from app.web.lookups import MAX_QUERY_NUMBER, dataset_or_404, run_or_404, upload_limits

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    return redirect(url_for("pages.list_runs"))


@bp.get("/runs")
def list_runs():
    filters = {k: request.args.get(k) or None for k in ("status", "mode", "dataset_key", "tag", "user", "cursor")}
    errors = {}
    if filters["tag"] and not validation.TAG_PATTERN.match(filters["tag"]):
        errors["tag"] = "not a tag: use letters, digits, '.', '_', ':' or '-'"
        filters["tag"] = None
    if filters["status"] and filters["status"] not in STATUSES:
        errors["status"] = "unknown status"
        filters["status"] = None
    if filters["mode"] and filters["mode"] not in MODES:
        errors["mode"] = "unknown mode"
        filters["mode"] = None
    try:
        page = queries.list_runs(limit=current_app.config["RUNS_PAGE_SIZE"], **filters)
    except ValueError:
        errors["cursor"] = "that page link is no longer valid; showing the newest runs"
        filters["cursor"] = None
        page = queries.list_runs(limit=current_app.config["RUNS_PAGE_SIZE"], **filters)
    return render_template("runs/list.html", page=page, filters=filters, errors=errors,
                           datasets=dataset_store.list_datasets())


@bp.get("/runs/compare")
def compare_runs():
    """2 to 8 runs side by side; a wrong selection is explained on the page, with the way back."""
    try:
        found = comparison.compare(comparison.parse_ids(request.args.getlist("ids")),
                                   max_points=loss_chart.MAX_POINTS)
    except ValidationError as exc:
        return render_template("runs/compare.html", found=None, errors=exc.details, chart=None), 422
    labels = [run.title for run in found.runs]
    chart = loss_chart.render_comparison(list(zip(labels, found.series)))
    return render_template("runs/compare.html", found=found, errors={}, chart=chart,
                           colours=loss_chart.RUN_COLOURS)


MAX_POLLED_ROWS = 100


@bp.get("/runs/rows")
def run_rows():
    """The runs list's poll: the rows it names, to swap in out of band, and the next poll (if any is active)."""
    ids = []
    for raw in request.args.get("ids", "").split(",")[:MAX_POLLED_ROWS]:
        try:
            ids.append(uuid.UUID(raw))
        except ValueError:
            continue
    return render_template("runs/_rows.html", runs=queries.runs_by_ids(ids), oob=True)


def _form_context(values: dict, errors: dict) -> dict:
    # The form's own idempotency key, made when it is first shown and kept while it is corrected: a
    # double click, or a submission sent twice, starts one run.
    values.setdefault("submission", uuid.uuid4().hex)
    return {"values": values, "errors": errors, "fields": validation.FIELDS,
            "fields_by_name": validation.FIELDS_BY_NAME, "presets": model_catalog.PRESETS,
            "checkpoints": model_catalog.find_checkpoints(service.model_roots(current_app.config)),
            "registered": registry.pickable(),
            "datasets": dataset_store.list_datasets(), "labels": validation.FORM_LABELS}


def _form_key(submission: str) -> str | None:
    """The idempotency key a form submission is known by (None for a malformed one)."""
    try:
        return f"form:{uuid.UUID(hex=submission).hex}"
    except (ValueError, TypeError):
        return None


@bp.get("/runs/new")
def new_run():
    values = validation.form_defaults()
    values.update(dataset_key=request.args.get("dataset_key") or SAMPLE_KEY, mode=ASYNC)
    source = queries.get_run(request.args.get("clone", "")) if request.args.get("clone") else None
    if source is not None:
        values.update(validation.form_values(source.config), mode=source.mode)
    if request.args.get("model_id"):
        values["model_id"] = request.args["model_id"][:model_catalog.MAX_PATH_CHARS]
    return render_template("runs/new.html", **_form_context(values, {}))


@bp.post("/runs/new")
def submit_run():
    values = {k: v for k, v in request.form.items() if k != "csrf_token"}
    mode = values.pop("mode", SYNC)
    submission = values.pop("submission", "")
    key = _form_key(submission)
    try:
        try:
            run, _ = submit_and_carry_out(values, mode, current_actor(), key)
        except service.IdempotencyConflict:
            # The same form sent again with other settings (back, edit, resubmit): that is a new run.
            run, _ = submit_and_carry_out(values, mode, current_actor())
    except ValidationError as exc:
        errors = validation.in_form_words(exc.details)
        return render_template("runs/new.html", **_form_context({**values, "mode": mode, "submission": submission},
                                                                errors)), 422
    return redirect(url_for("pages.show_run", run_id=run.id), code=303)


@bp.get("/runs/submitted/<submission>")
def submitted_progress(submission: str):
    """How a form submission carried out in its request is coming along, for the form's progress panel."""
    key = _form_key(submission)
    run = service.submitted_run(key, current_actor().user_id) if key else None
    response = Response(render_template("runs/_submitted.html", run=run, status_words=run_view.STATUS_WORDS,
                                        progress=run_view.ProgressView.of(run) if run else None))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/runs/<run_id>")
def show_run(run_id: str):
    run = run_or_404(run_id)
    return render_template("runs/detail.html", **run_view.page_context(run))


@bp.get("/runs/<run_id>/status")
def run_status_fragment(run_id: str):
    """The fragment the run page polls; it stops polling itself once the run is terminal.

    With ?log_after=SEQ it also carries the output stored since that chunk, appended
    to the page's log out of band.
    """
    # Every open page asks every few seconds, and mostly nothing has changed. The validator comes from
    # what this process has heard changed (app.change_feed): a match is answered 304, and a request
    # without one gets the fragment this process last rendered for the same validator.
    viewer = f"{current_actor().user_id}:{session.get('csrf_token', '')}"
    state = run_view.fragment_state(run_id, request.query_string.decode(errors="replace"), viewer)
    if state is not None:
        if request.if_none_match.contains(state.etag):
            return _fragment_headers(Response(status=304), state.etag)
        kept = run_view.rendered_fragment(state)
        if kept is not None:
            return _fragment_headers(Response(kept), state.etag)
    run = run_or_404(run_id)
    try:
        log_after = min(max(0, int(request.args.get("log_after", "")[:20])), MAX_QUERY_NUMBER)
    except ValueError:
        log_after = None
    seen = request.args.get("seen")
    body = render_template("runs/_status.html", log_increment=log_after is not None,
                           **run_view.status_context(run, log_after=log_after, state=state,
                                                     seen_status=seen if seen in STATUSES else None))
    if state is None:
        return _fragment_headers(Response(body), None)
    run_view.keep_fragment(state, run, body)
    return _fragment_headers(Response(body), state.etag)


def _fragment_headers(response: Response, etag: str | None) -> Response:
    # no-cache: the browser keeps the fragment but asks every time, sending If-None-Match.
    response.headers["Cache-Control"] = "private, no-cache"
    if etag is not None:
        response.set_etag(etag)
    return response


@bp.get("/runs/<run_id>/cancel")
def confirm_cancel(run_id: str):
    """Cancel asks first, in plain HTML: this page holds the form that cancels."""
    return render_template("runs/cancel.html", run=run_or_404(run_id))


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str):
    service.cancel_run(run_or_404(run_id), current_actor())
    return redirect(url_for("pages.show_run", run_id=run_id), code=303)


@bp.post("/runs/<run_id>/retry")
def retry_run(run_id: str):
    run = retry_and_carry_out(run_or_404(run_id), current_actor())
    return redirect(url_for("pages.show_run", run_id=run.id), code=303)


@bp.get("/runs/<run_id>/log.txt")
def download_log(run_id: str):
    run = run_or_404(run_id)
    return Response(stream_with_context(logs.full_text(run.id)), mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="run-{run.id}.log"'})


@bp.get("/workers")
def list_workers():
    now, workers = worker_registry.fleet(current_app.config["LEASE_TIMEOUT_SECONDS"])
    return render_template("workers.html", workers=workers, now=now, stopped=worker_registry.STOPPED)


@bp.get("/runs/<run_id>/artifacts/<path:relative>")
def download_artifact(run_id: str, relative: str):
    """One of the run's stored files (app.web.downloads)."""
    return downloads.file_response(run_or_404(run_id), relative)


@bp.get("/runs/<run_id>/archive/<path:folder>.zip")
def download_folder(run_id: str, folder: str):
    """A folder of the run (its model, a checkpoint step) as one zip archive, made as it streams."""
    return downloads.folder_response(run_or_404(run_id), folder)


@bp.get("/datasets")
def list_datasets():
    return render_template("datasets/list.html", datasets=dataset_store.list_datasets(), errors={}, values={})


@bp.post("/datasets")
def upload_dataset():
    values = {"name": request.form.get("name", ""), "description": request.form.get("description", "")}
    upload = request.files.get("file")
    try:
        parsing.check_name(values["name"])
        if upload is None or not upload.filename:
            raise ValidationError(parsing.INVALID_DATASET, {"file": "choose a .jsonl file to upload"})
        examples = parsing.parse_jsonl(upload.stream, upload_limits())
        dataset = dataset_store.create_dataset(values["name"], examples, values["description"],
                                               created_by=current_actor().user_id)
    except ValidationError as exc:
        return render_template("datasets/list.html", datasets=dataset_store.list_datasets(), errors=exc.details,
                               values=values), 422
    return redirect(url_for("pages.show_dataset", key=dataset.key), code=303)


@bp.get("/datasets/<key>/leaderboard")
def leaderboard(key: str):
    """Completed runs scored on this dataset, best first."""
    dataset = dataset_or_404(key)
    limit = current_app.config["RUNS_PAGE_SIZE"]
    try:
        offset = max(0, int(request.args.get("offset", "0")[:20]))
    except ValueError:
        offset = 0
    if offset > MAX_QUERY_NUMBER:  # no page link makes one; show the first page rather than a 500
        offset = 0
    runs = evaluation.leaderboard(dataset.key, limit + 1, offset)
    return render_template("datasets/leaderboard.html", dataset=dataset, runs=runs[:limit], offset=offset,
                           next_offset=offset + limit if len(runs) > limit else None, limit=limit)


@bp.get("/datasets/<key>")
def show_dataset(key: str):
    dataset = dataset_or_404(key)
    return render_template("datasets/detail.html", dataset=dataset,
                           examples=dataset_store.preview_examples(key, 20))
