"""The run page and its fragment render for every state and every partial progress, and stay current."""
import html
import io
import json
import re
import uuid
import zipfile

import pytest
from sqlalchemy import text

from app.execution.recorder import ProgressRecorder
from app.extensions import db
from app.queue import store as queue_store
from app.runs import lifecycle
from tests.helpers import SAMPLE, fake_trainer_command, submit

EVENTS = [
    {"event": "start", "total_steps": 4, "train_examples": 216, "eval_examples": 24},
    {"event": "step", "step": 1, "loss": 5.9, "learning_rate": 0.001, "tokens_per_second": 90.0,
     "elapsed_seconds": 2.4},
    {"event": "step", "step": 2, "loss": 4.1, "learning_rate": 0.001, "tokens_per_second": 1800.0,
     "elapsed_seconds": 2.5},
    {"event": "eval", "step": 2, "loss": 4.4},
    {"event": "checkpoint", "step": 2, "path": "checkpoints"},
    {"event": "step", "step": 3, "loss": 3.2, "learning_rate": 0.001, "tokens_per_second": 2200.0,
     "elapsed_seconds": 2.6},
    {"event": "end", "steps": 3, "final_loss": 3.2, "best_loss": 3.2, "tokens_per_second": 2000.0},
    {"event": "error", "message": "boom"},
]
PARTIAL_PROGRESS = [
    {}, {"started": True}, {"total_steps": 10}, {"total_steps": 10, "step": 3}, {"step": 3, "loss": 1.0},
    {"total_steps": 10, "step": 3, "elapsed_seconds": None, "loss": None, "eval_loss": None},
    {"total_steps": 10, "step": "three", "loss": "high", "tokens_per_second": [1]},
    {"total_steps": 0, "step": 0}, {"total_steps": 10, "step": 12, "elapsed_seconds": 5.0},
    {"total_steps": True, "last_checkpoint_step": "x"},
]
PARTIAL_RESULTS = [None, {}, {"final_loss": None}, {"final_loss": 1.5, "best_loss": None, "steps": None},
                   {"tokens_per_second": 10.0}, {"problems": []}, {"ok": False, "problems": ["x"]}]


def render_both(client, run_id: str, seen: str = "pending") -> tuple[str, str]:
    page = client.get(f"/runs/{run_id}")
    fragment = client.get(f"/runs/{run_id}/status?log_after=0&seen={seen}")
    assert page.status_code == 200 and fragment.status_code == 200
    return page.get_data(as_text=True), fragment.get_data(as_text=True)


def _set(run_id: str, **columns) -> None:
    sets = ", ".join(f"{name} = CAST(:{name} AS jsonb)" if name in ("progress", "result") else f"{name} = :{name}"
                     for name in columns)
    values = {k: json.dumps(v) if k in ("progress", "result") else v for k, v in columns.items()}
    db.session.execute(text(f"UPDATE tunix_runs SET {sets} WHERE id = :id"), {**values, "id": run_id})
    db.session.commit()


def test_every_protocol_event_in_turn_renders(client):
    run_id = submit(client)["run_id"]
    render_both(client, run_id)  # pending
    claimed = queue_store.claim_next_run("worker-a")
    render_both(client, run_id)  # running, nothing reported yet
    recorder = ProgressRecorder(claimed.id)
    for event in EVENTS:
        recorder.on_event(event)
        recorder.flush()
        page, fragment = render_both(client, run_id)
        assert 'id="run-status"' in page and 'id="run-status"' in fragment
    assert "step 3 of 4" in fragment and "eval loss 4.4000" in fragment
    lifecycle.cancel(claimed.id, "running")
    page, fragment = render_both(client, run_id, seen="running")
    assert "left</span>" not in fragment, "no time left is shown while the run is stopping"
    assert lifecycle.confirm_cancel(claimed.id, claimed.lease)
    render_both(client, run_id, seen="cancelling")


@pytest.mark.parametrize("status", ["pending", "running", "cancelling", "completed", "failed", "timeout",
                                    "cancelled"])
def test_partial_progress_and_results_render_in_every_status(client, status):
    run_id = submit(client)["run_id"]
    _set(run_id, status=status)
    for progress in PARTIAL_PROGRESS:
        _set(run_id, progress=progress)
        render_both(client, run_id)
    for result in PARTIAL_RESULTS:
        _set(run_id, result=result)
        render_both(client, run_id)


def test_dry_runs_render_as_plans_with_a_way_to_start_them(client):
    run_id = submit(client, "dry_run", name="plan me", tags=["probe"], max_steps=7)["run_id"]
    page, _ = render_both(client, run_id, seen="running")
    assert "Planned" in page and "Start this run" in page and "0.0 s" not in page
    listing = client.get("/runs").get_data(as_text=True)
    assert ">plan<" in listing
    # What the page's "Start this run" form sends: its hidden fields, as rendered.
    start = page[page.index('class="start-plan"'):]
    start = start[:start.index("</form>")]
    form = {name: html.unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', start)}
    assert form["mode"] == "async" and form["mesh"] == "fsdp=1, tp=1" and form["max_steps"] == "7"
    started = client.post("/runs/new", data=form)
    assert started.status_code == 303
    new_id = started.headers["Location"].rsplit("/", 1)[1]
    new = client.get(f"/api/tunix/runs/{new_id}").get_json()
    old = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert new["mode"] == "async" and new["config"] == old["config"]


def test_a_status_change_brings_the_whole_page_up_to_date(client, app, artifacts_root):
    app.config.update(TRAIN_COMMAND=fake_trainer_command("--artifacts"))
    run_id = submit(client, "sync")["run_id"]
    fragment = client.get(f"/runs/{run_id}/status?seen=running").get_data(as_text=True)
    for section in ("run-details", "run-artifacts", "run-tails"):
        assert f'<section id="{section}"' in fragment and 'hx-swap-oob="true"' in fragment
    assert 'id="run-announcer" hx-swap-oob="innerHTML"' in fragment and "completed." in fragment
    assert "Download model" in fragment and "checkpoint at step 3" in fragment
    assert "fake trainer: 240 examples" in fragment  # the stdout tail
    unchanged = client.get(f"/runs/{run_id}/status?seen=completed").get_data(as_text=True)
    assert "hx-swap-oob" not in unchanged


def test_artifacts_are_grouped_and_the_model_downloads_as_one_archive(client, app, artifacts_root):
    app.config.update(TRAIN_COMMAND=fake_trainer_command("--artifacts"))
    run_id = submit(client, "sync")["run_id"]
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert page.index("Download model") < page.index("checkpoint at step 3")
    assert "model_params/d/0a1b" not in page, "a checkpoint's inner files are not listed one by one"
    archive = client.get(f"/runs/{run_id}/archive/model.zip")
    assert archive.status_code == 200 and archive.mimetype == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(archive.get_data())).namelist()
    assert sorted(n.split("/", 1)[1] for n in names) == ["config.json", "model.safetensors", "tokenizer.json"]
    checkpoint = zipfile.ZipFile(io.BytesIO(client.get(f"/runs/{run_id}/archive/checkpoints/3.zip").get_data()))
    assert len(checkpoint.namelist()) == 3
    for escape in ("..", "../..", "checkpoints/../../x", "nothing-here"):
        assert client.get(f"/runs/{run_id}/archive/{escape}.zip").status_code == 404


def test_names_and_tags_on_the_api_the_form_and_the_list(client):
    named = submit(client, name="  lr 3e-3 baseline ", tags=["baseline", "lr", "baseline"])
    run = client.get(f"/api/tunix/runs/{named['run_id']}").get_json()
    assert run["name"] == "lr 3e-3 baseline" and run["tags"] == ["baseline", "lr"]
    submit(client, tags=["other"])
    for body, field in (({"tags": ["has space"]}, "tags"), ({"tags": ",".join(f"t{i}" for i in range(11))}, "tags"), ({"tags": [1]}, "tags"),
                        ({"name": "x" * 121}, "name"), ({"name": "two\nlines"}, "name")):
        response = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, **body})
        assert response.status_code == 422 and field in response.get_json()["details"]
    listing = client.get("/runs?tag=baseline").get_data(as_text=True)
    assert "lr 3e-3 baseline" in listing and listing.count('id="run-row-') == 1
    api = client.get("/api/tunix/runs?tag=baseline").get_json()["runs"]
    assert [r["name"] for r in api] == ["lr 3e-3 baseline"]
    assert client.get("/api/tunix/runs?tag=no%20such").status_code == 422
    form = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async", "name": "from the form",
                                          "tags": "a, b,, a"})
    new_id = form.headers["Location"].rsplit("/", 1)[1]
    assert client.get(f"/api/tunix/runs/{new_id}").get_json()["tags"] == ["a", "b"]
    clone = client.get(f"/runs/new?clone={new_id}").get_data(as_text=True)
    assert 'value="from the form"' in clone and 'value="a, b"' in clone


def test_a_rejected_form_names_each_field_and_takes_the_focus(client):
    response = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async", "learning_rate": "fast",
                                              "tags": "no spaces please"})
    body = response.get_data(as_text=True)
    assert response.status_code == 422
    assert 'id="error-summary"' in body and "data-focus-on-load" in body
    assert 'href="#learning_rate"' in body and 'href="#tags"' in body
    assert 'aria-describedby="learning_rate-hint learning_rate-error" aria-invalid="true"' in body


def test_cancel_asks_first_and_works_without_javascript(client):
    run_id = submit(client)["run_id"]
    assert "Cancel…" in client.get(f"/runs/{run_id}").get_data(as_text=True)
    confirm = client.get(f"/runs/{run_id}/cancel").get_data(as_text=True)
    assert "Yes, cancel the run" in confirm and f'action="/runs/{run_id}/cancel"' in confirm
    assert client.post(f"/runs/{run_id}/cancel").status_code == 303
    assert client.get(f"/api/tunix/runs/{run_id}/status").get_json()["status"] == "cancelled"
    assert "nothing to cancel" in client.get(f"/runs/{run_id}/cancel").get_data(as_text=True)


def test_the_runs_list_shows_progress_and_loss_and_polls_its_active_rows_in_one_request(client):
    done = submit(client, "sync", name="finished one")["run_id"]
    running = submit(client)["run_id"]
    _set(running, status="running", progress={"total_steps": 10, "step": 4})
    listing = client.get("/runs").get_data(as_text=True)
    assert ">1.3333<" in listing  # the fake trainer's final loss after 3 steps, in its column
    assert 'aria-label="Run ' in listing and "4/10" in listing
    assert f"/runs/rows?ids={running}" in listing and done not in listing.split('id="runs-poll"')[1]
    rows = client.get(f"/runs/rows?ids={running},{done},not-an-id").get_data(as_text=True)
    assert rows.count("<template>") == 2 and 'hx-swap-oob="true"' in rows and "hx-get" in rows
    _set(running, status="completed", progress={"total_steps": 10, "step": 10})
    rows = client.get(f"/runs/rows?ids={running}").get_data(as_text=True)
    assert "hx-get" not in rows, "the poll ends once no listed run is active"


def test_rates_are_smoothed_and_time_left_is_only_estimated_while_running(client):
    from app.runs.progress import time_left_seconds

    recorder = ProgressRecorder(uuid.UUID(submit(client)["run_id"]))
    # The first step took 10 s (tracing and compiling); the steady pace after it is 0.5 s a step.
    for step, rate, elapsed in ((1, 50.0, 10.0), (2, 2000.0, 10.5), (3, 2200.0, 11.0), (4, 2163.8, 11.5)):
        recorder.on_event({"event": "step", "step": step, "loss": 1.0, "tokens_per_second": rate,
                           "elapsed_seconds": elapsed})
    progress = recorder._progress
    assert progress["tokens_per_second"] == pytest.approx((2000 + 2200 + 2163.8) / 3, abs=0.1)
    assert progress["seconds_per_step"] == pytest.approx(0.5)
    progress = {**progress, "total_steps": 10}
    assert time_left_seconds("running", progress) == pytest.approx(6 * 0.5)  # not 6 x 11.5 / 4
    # With scoring after training to come: 24 answers in batches of 16 at 0.25 s a batch (the pass before).
    progress["evaluation_before"] = {"examples": 24, "batch_size": 16, "batch_seconds": 0.25}
    assert time_left_seconds("running", progress) == pytest.approx(3.0 + 0.5)
    progress.update(phase="scoring_after", evaluating={"phase": "after", "done": 16, "total": 24})
    assert time_left_seconds("running", progress) == pytest.approx(0.25)  # never "0.0 s left" mid-pass
    for phase in ("loading", "scoring_before", "storing"):
        assert time_left_seconds("running", {**progress, "phase": phase}) is None
    for status in ("cancelling", "pending", "completed"):
        assert time_left_seconds(status, progress) is None

def test_a_pending_run_s_wait_counts_down_from_the_runs_ahead_and_never_freezes(client):
    from app.queue import registry

    registry.register("gpu-1:1:aa", "gpu-1", 1)
    for _ in range(3):  # the typical run takes 60 s
        done = submit(client)["run_id"]
        _set(done, status="completed", duration_seconds=60.0, started_at="2026-01-01T00:00:00Z",
             completed_at="2026-01-01T00:01:00Z")
    running, waiting = submit(client)["run_id"], submit(client)["run_id"]
    db.session.execute(text("UPDATE tunix_runs SET status = 'running', worker_id = 'gpu-1:1:aa', attempt = 1, "
                            "started_at = now() - interval '20 seconds', heartbeat_at = now() WHERE id = :id"),
                       {"id": running})
    db.session.commit()
    # One worker, busy for about 40 s more with the run ahead.
    assert "It should start in about 40.0 s." in client.get(f"/runs/{waiting}").get_data(as_text=True)
    _set(running, started_at="2026-01-01T00:00:00Z")  # the run ahead is taking longer than usual
    page = client.get(f"/runs/{waiting}/status?seen=pending").get_data(as_text=True)
    assert "It should start any moment now." in page and "about" not in page.split("any moment")[0][-40:]
