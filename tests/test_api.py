"""The JSON API end to end on a real Postgres: modes, reads, errors, idempotency, pagination."""
import threading
import uuid

import pytest
from sqlalchemy import func, select, text

from app.extensions import db
from app.models import RunMetric, TunixRun
from tests.helpers import SAMPLE, fake_trainer_command, post_run as submit


def test_sync_is_the_default_and_returns_the_finished_run(client):
    response = submit(client, max_steps=5)
    assert response.status_code == 200
    run = response.get_json()
    assert run["mode"] == "sync" and run["status"] == "completed" and run["exit_code"] == 0
    assert run["started_at"] and run["completed_at"] and run["duration_seconds"] >= 0
    assert run["config"]["max_steps"] == 5 and run["config"]["batch_size"] == 4
    assert "fake trainer: 240 examples" in run["stdout_tail"]
    assert response.headers["Location"] == f"/api/tunix/runs/{run['run_id']}"
    metrics = client.get(f"/api/tunix/runs/{run['run_id']}/metrics").get_json()
    assert [p["step"] for p in metrics["train"]] == [1, 2, 3]
    assert metrics["eval"] == [{"step": 3, "loss": 1.5, "learning_rate": None, "tokens_per_second": None}]
    assert metrics["progress"]["total_steps"] == 3


def test_sync_failure_is_stored(client, app):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--exit-code", "7")
    run = submit(client, "sync").get_json()
    assert run["status"] == "failed" and run["exit_code"] == 7
    assert "exited with code 7" in run["error_message"]
    assert "failing on purpose" in run["stderr_tail"]


def test_sync_timeout_is_stored(client, app):
    app.config.update(TRAIN_COMMAND=fake_trainer_command("--sleep", "30"), RUN_TIMEOUT_SECONDS=1.0)
    run = submit(client, "sync").get_json()
    assert run["status"] == "timeout" and "timed out after 1 s" in run["error_message"]


def test_dry_run_plans_without_training(client, artifacts_root):
    run = submit(client, "dry_run", batch_size=8, num_epochs=2).get_json()
    assert run["status"] == "completed" and run["mode"] == "dry_run" and run["exit_code"] is None
    plan = run["result"]
    assert plan["ok"] and plan["examples"] == 240
    assert plan["train_examples"] + plan["eval_examples"] == 240
    assert plan["total_steps"] == 2 * (plan["train_examples"] // 8)
    assert plan["tokens"]["total"] > 0 and plan["trainer_config"]["batch_size"] == 8
    assert not any(artifacts_root.iterdir()), "a dry run must not start the trainer"


def test_dry_run_with_problems_fails_listing_them(client):
    run = submit(client, "dry_run", batch_size=4000, max_seq_length=8).get_json()
    assert run["status"] == "failed"
    assert len(run["result"]["problems"]) == 2
    assert run["error_message"].startswith("dry run found problems: batch_size: 4000 is larger")


def test_async_returns_at_once_with_pending(client):
    response = submit(client, "async")
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "pending" and uuid.UUID(body["run_id"])
    assert response.headers["Location"] == f"/api/tunix/runs/{body['run_id']}"
    status = client.get(f"/api/tunix/runs/{body['run_id']}/status").get_json()
    assert status == {"run_id": body["run_id"], "status": "pending", "queued_at": status["queued_at"],
                      "started_at": None, "completed_at": None, "exit_code": None}
    assert status["queued_at"]


def test_unknown_and_malformed_run_ids_are_404(client):
    for path in (f"/api/tunix/runs/{uuid.uuid4()}", f"/api/tunix/runs/{uuid.uuid4()}/status",
                 "/api/tunix/runs/not-a-uuid", "/api/tunix/runs/not-a-uuid/status",
                 f"/api/tunix/runs/{uuid.uuid4()}/metrics"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "no run with id" in response.get_json()["error"]


@pytest.mark.parametrize("query, body, status, field", [
    ("?mode=later", {"dataset_key": SAMPLE}, 400, "mode"),
    ("?mode=async", "{not json", 400, "body"),
    ("?mode=async", "[1, 2]", 400, "body"),
    ("?mode=async", "", 400, "body"),
    ("?mode=async", {"dataset_key": "nope-v1"}, 422, "dataset_key"),
    ("?mode=async", {}, 422, "dataset_key"),
    ("?mode=async", {"dataset_key": SAMPLE, "model_id": "gpt-17"}, 422, "model_id"),
    ("?mode=async", {"dataset_key": SAMPLE, "batch_size": "many"}, 422, "batch_size"),
    ("?mode=async", {"dataset_key": SAMPLE, "lr": 0.1}, 422, "lr"),
    ("?mode=sync", {"dataset_key": SAMPLE, "learning_rate": 5}, 422, "learning_rate"),
])
def test_bad_submissions_name_the_field_and_store_nothing(client, query, body, status, field):
    if isinstance(body, dict):
        response = client.post("/api/tunix/run" + query, json=body)
    else:
        response = client.post("/api/tunix/run" + query, data=body, content_type="application/json")
    assert response.status_code == status
    payload = response.get_json()
    assert payload["error"] and field in payload["details"]
    assert db.session.scalar(select(func.count()).select_from(TunixRun)) == 0


def test_oversize_body_is_413(client, app):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = client.post("/api/tunix/run?mode=async", data="{" + " " * 2000 + "}",
                           content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["details"]["body"] == "must be at most 1000 bytes"


def test_idempotency_key_returns_the_first_run(client):
    headers = {"Idempotency-Key": "nightly-42"}
    first = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}, headers=headers)
    second = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.get_json()["run_id"] == second.get_json()["run_id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert db.session.scalar(select(func.count()).select_from(TunixRun)) == 1
    conflict = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "seed": 9}, headers=headers)
    assert conflict.status_code == 409 and "Idempotency-Key" in conflict.get_json()["details"]


def test_an_idempotency_key_is_its_sender_s(app, client, credentials):
    """The audit's replay: another user's request with the key a member used first got the member's run."""
    from tests.helpers import make_user

    headers = {"Idempotency-Key": "nightly-42"}
    mine = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}, headers=headers).get_json()
    admin = make_user("boss", admin=True)
    theirs = app.test_client().post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "seed": 3},
                                    headers={**headers, "Authorization": f"Bearer {admin.token}"})
    assert theirs.status_code == 202 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["run_id"] != mine["run_id"]
    assert client.get(f"/api/tunix/runs/{theirs.get_json()['run_id']}").get_json()["created_by"] == "boss"
    again = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}, headers=headers)
    assert again.get_json()["run_id"] == mine["run_id"] and again.headers["Idempotent-Replayed"] == "true"
    # A key stored before keys were scoped still replays for the user who sent it, and only for them.
    db.session.execute(text("UPDATE tunix_runs SET idempotency_key = 'legacy' WHERE id = :id"), {"id": mine["run_id"]})
    db.session.commit()
    legacy = {"Idempotency-Key": "legacy"}
    assert client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE},
                       headers=legacy).get_json()["run_id"] == mine["run_id"]
    other = app.test_client().post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE},
                                   headers={**legacy, "Authorization": f"Bearer {admin.token}"})
    assert other.status_code == 202 and other.get_json()["run_id"] != mine["run_id"]


def test_idempotent_sync_replay_does_not_train_again(client, artifacts_root):
    headers = {"Idempotency-Key": "once"}
    first = client.post("/api/tunix/run", json={"dataset_key": SAMPLE}, headers=headers).get_json()
    second = client.post("/api/tunix/run", json={"dataset_key": SAMPLE}, headers=headers).get_json()
    assert first["run_id"] == second["run_id"] and second["status"] == "completed"
    assert len(list(artifacts_root.iterdir())) == 1


def test_concurrent_submissions_with_one_key_make_one_run(app, credentials):
    results = []

    def post():
        with app.test_client() as c:
            results.append(c.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE},
                                  headers={"Idempotency-Key": "race",
                                           "Authorization": f"Bearer {credentials.token}"}).get_json()["run_id"])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 8
    assert db.session.scalar(select(func.count()).select_from(TunixRun)) == 1


def test_list_is_newest_first_filtered_and_keyset_paginated(client):
    ids = [submit(client, "async").get_json()["run_id"] for _ in range(7)]
    submit(client, "dry_run")
    seen, cursor = [], None
    while True:
        query = "/api/tunix/runs?mode=async&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query).get_json()
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    completed = client.get("/api/tunix/runs?status=completed").get_json()["runs"]
    assert [r["mode"] for r in completed] == ["dry_run"]
    assert client.get(f"/api/tunix/runs?dataset_key={SAMPLE}&limit=200").get_json()["runs"][0]["mode"] == "dry_run"


@pytest.mark.parametrize("query, field", [("status=lost", "status"), ("mode=x", "mode"), ("limit=0", "limit"),
                                          ("limit=abc", "limit"), ("cursor=%%%", "cursor")])
def test_bad_list_queries_are_422(client, query, field):
    response = client.get(f"/api/tunix/runs?{query}")
    assert response.status_code == 422 and field in response.get_json()["details"]


def test_health_reports_the_database(client):
    assert client.get("/api/health").get_json() == {"status": "ok", "database": "ok"}


def test_health_is_503_when_the_database_is_down(app_config):
    from app import create_app

    down = create_app({**app_config, "DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/none"})
    client = down.test_client()
    response = client.get("/api/health")
    assert response.status_code == 503 and response.get_json()["status"] == "unavailable"
    # The token cannot be checked without the database: the answer is 503, not 401.
    api = client.get("/api/tunix/runs", headers={"Authorization": "Bearer trt_any"})
    assert api.status_code == 503 and "database is unavailable" in api.get_json()["error"]
    page = client.post("/login", data={"username": "tester", "password": "a password"})
    assert page.status_code == 503 and b"database is unavailable" in page.data and b"Traceback" not in page.data


def test_metric_points_are_stored_per_run(client):
    run_id = submit(client, "sync").get_json()["run_id"]
    count = db.session.scalar(select(func.count()).select_from(RunMetric).where(RunMetric.run_id == run_id))
    assert count == 4  # three train steps and one eval


def test_metric_series_can_be_thinned_in_the_database(client):
    from app.execution.recorder import ProgressRecorder

    run_id = submit(client, "async").get_json()["run_id"]
    recorder = ProgressRecorder(uuid.UUID(run_id))
    for step in range(1, 1001):
        recorder.on_event({"event": "step", "step": step, "loss": 5.0 - step / 1000})
    recorder.flush()
    full = client.get(f"/api/tunix/runs/{run_id}/metrics").get_json()["train"]
    assert [p["step"] for p in full] == list(range(1, 1001))
    thin = client.get(f"/api/tunix/runs/{run_id}/metrics?max_points=100").get_json()["train"]
    steps = [p["step"] for p in thin]
    assert steps[0] == 1 and steps[-1] == 1000 and 90 <= len(steps) <= 101
    assert steps == sorted(steps) and all(b - a == 10 for a, b in zip(steps[:-2], steps[1:-1]))
    assert client.get(f"/api/tunix/runs/{run_id}/metrics?max_points=1").status_code == 422
    fragment = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    points = fragment.split('class="series-train" fill="none" points="')[1].split('"')[0].split()
    assert len(points) <= 401
