"""Real `worker.py` processes against the test database."""
import signal
from collections import Counter

from sqlalchemy import select

from app.extensions import db
from app.models import TunixRun
from tests.helpers import SAMPLE, fake_trainer_command, run_status, wait_for


def test_async_run_is_carried_out_by_a_worker_process(client, worker_env, start_worker):
    run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    worker = start_worker(worker_env(fake_trainer_command("--steps", "5")))
    wait_for(lambda: run_status(client, run_id) == "completed")
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["exit_code"] == 0 and run["worker_id"].split(":")[1] == str(worker.pid)
    assert run["started_at"] >= run["queued_at"] and run["completed_at"] >= run["started_at"]
    assert len(client.get(f"/api/tunix/runs/{run_id}/metrics").get_json()["train"]) == 5
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert f"claimed run {run_id}" in output and f"run {run_id}: running/cancelling -> completed" in output
    assert "SIGTERM received" in output


def test_worker_stores_failures_with_their_reason(client, worker_env, start_worker):
    run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    worker = start_worker(worker_env(["/nonexistent/trainer"]), "--exit-when-idle")
    worker.wait(timeout=60)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["status"] == "failed" and "could not start the trainer" in run["error_message"]


def test_many_workers_claim_each_run_exactly_once(app, client, worker_env, start_worker, tmp_path):
    app.config["MAX_ACTIVE_RUNS_PER_USER"] = 100
    record_dir = tmp_path / "executions"
    record_dir.mkdir()
    run_ids = {client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
               for _ in range(60)}
    env = worker_env(fake_trainer_command("--steps", "0", "--record-dir", str(record_dir)))
    workers = [start_worker(env, "--exit-when-idle") for _ in range(4)]
    for worker in workers:
        worker.wait(timeout=180)
        assert worker.returncode == 0
    executions = Counter(path.name.split(".")[0] for path in record_dir.iterdir())
    assert set(executions) == run_ids, "every run executed"
    assert max(executions.values()) == 1, "no run executed twice"
    db.session.expire_all()
    runs = db.session.scalars(select(TunixRun)).all()
    assert {r.status for r in runs} == {"completed"}
    assert len({r.worker_id for r in runs}) > 1, "the work was shared"


def test_sigterm_finishes_the_current_run_and_claims_nothing_new(client, worker_env, start_worker):
    first = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    second = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    worker = start_worker(worker_env(fake_trainer_command("--sleep", "2")))
    wait_for(lambda: run_status(client, first) == "running")
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=60)
    assert worker.returncode == 0
    assert run_status(client, first) == "completed"
    assert run_status(client, second) == "pending"


def test_a_failure_inside_the_worker_fails_the_run_with_its_reason(client, worker_env, start_worker, tmp_path):
    not_a_directory = tmp_path / "scratch-file"
    not_a_directory.write_text("the scratch folder cannot live under a file")
    run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    worker = start_worker(worker_env(TUNIX_SCRATCH_DIR=str(not_a_directory)), "--exit-when-idle")
    worker.wait(timeout=60)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["status"] == "failed"
    assert run["error_message"].startswith("worker error (") and "the worker log has the details" in run["error_message"]
    assert worker.returncode == 0, "the worker survives a run that fails inside it"
