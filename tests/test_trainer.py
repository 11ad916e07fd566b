"""The real trainer: Tunix and JAX on the CPU, the tiny preset, launched by the platform."""
import json
import shutil
import subprocess
import sys
import time

import pytest

from app.config import default_train_command
from tests.helpers import ROOT, SAMPLE, processes_mentioning, run_status, wait_for

pytestmark = pytest.mark.trainer
REAL_TRAINER = [sys.executable, "-m", "app.trainer"]


def metrics_of(client, run_id):
    return client.get(f"/api/tunix/runs/{run_id}/metrics").get_json()


def test_default_command_is_the_tunix_trainer():
    assert default_train_command()[1:] == ["-m", "app.trainer"]


def test_worker_trains_tiny_with_tunix(client, worker_env, start_worker, artifacts_root):
    body = {"dataset_key": SAMPLE, "max_steps": 24, "eval_every_n_steps": 8, "checkpoint_every_n_steps": 8,
            "learning_rate": 0.003}
    run_id = client.post("/api/tunix/run?mode=async", json=body).get_json()["run_id"]
    start_worker(worker_env(REAL_TRAINER))
    wait_for(lambda: run_status(client, run_id) in ("completed", "failed", "timeout"), timeout=240)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["status"] == "completed", run["error_message"] or run["stderr_tail"]

    series = metrics_of(client, run_id)
    losses = [p["loss"] for p in series["train"]]
    assert [p["step"] for p in series["train"]] == list(range(1, 25))
    assert losses[-1] < losses[0] - 1.0, losses
    assert [p["step"] for p in series["eval"]] == [0, 8, 16, 24]
    assert series["eval"][-1]["loss"] < series["eval"][0]["loss"]
    assert all(p["learning_rate"] > 0 for p in series["train"][:-1])

    result = run["result"]
    assert result["steps"] == 24 and result["device"] == "cpu"
    assert result["final_loss"] == pytest.approx(losses[-1])
    assert result["tokens_per_second"] > 0 and result["time_to_first_step_seconds"] > 0
    run_dir = artifacts_root / run_id
    assert (run_dir / "checkpoints" / "24").is_dir()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 24
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert "training tiny (full" in run["stdout_tail"]

    # Scored with Tunix's sampler before the first step and after the last, on the 24 held-out examples.
    evaluation = result["evaluation"]
    assert evaluation["examples"] == 24 and evaluation["source"] == "held-out split" and evaluation["error"] is None
    for phase in ("before", "after"):
        scores = evaluation[phase]
        assert 0 <= scores["answer_match"] <= 1 and 0 <= scores["exact_match"] <= 1, scores
        assert 0 < scores["mean_generated_tokens"] <= 64 and scores["generation_tokens_per_second"] > 0
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 48
    assert sorted(p["index"] for p in predictions if p["phase"] == "after") == list(range(24))
    stored = client.get(f"/api/tunix/runs/{run_id}/evaluation?limit=200").get_json()
    assert stored["total"] == 24 and stored["examples"][0]["prompt"] == predictions[24]["prompt"]

    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "Final loss" in page and 'class="series-eval"' in page
    assert "Answers after training" in page and "The first 20 of 24" in page
    assert f"/runs/{run_id}/artifacts/summary.json" in page
    download = client.get(f"/runs/{run_id}/artifacts/summary.json")
    assert download.status_code == 200 and json.loads(download.data)["steps"] == 24
    for escape in ("../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"):
        assert client.get(f"/runs/{run_id}/artifacts/{escape}", follow_redirects=True).status_code == 404


def test_scoring_finds_what_a_model_memorised(client, app):
    """Four facts, learnt by heart: after training every answer is right, before it none is."""
    facts = [("colour code of red", "#### 17"), ("colour code of blue", "#### 42"),
             ("colour code of green", "#### 8"), ("colour code of black", "#### 95")]
    created = client.post("/api/datasets", json={"name": "codes", "examples": [
        {"prompt": p, "response": r} for p, r in facts]})
    assert created.status_code == 201
    app.config["TRAIN_COMMAND"] = REAL_TRAINER
    app.config["RUN_TIMEOUT_SECONDS"] = 600.0  # a real run inside the request, on a busy CI host
    run = client.post("/api/tunix/run?mode=sync", json={
        "dataset_key": "codes-v1", "eval_dataset_key": "codes-v1", "eval_fraction": 0, "batch_size": 4,
        "max_steps": 150, "num_epochs": 1000, "learning_rate": 0.01, "warmup_steps": 10, "max_seq_length": 32,
        "eval_max_new_tokens": 8}).get_json()
    assert run["status"] == "completed", run["error_message"] or run["stderr_tail"]
    evaluation = run["result"]["evaluation"]
    assert evaluation["source"] == "eval dataset" and evaluation["examples"] == 4
    assert evaluation["before"]["answer_match"] == 0.0
    assert evaluation["after"]["answer_match"] == 1.0, client.get(
        f"/api/tunix/runs/{run['run_id']}/evaluation").get_json()["examples"]
    assert run["evaluated_on"] == "codes-v1"
    board = client.get("/api/datasets/codes-v1/leaderboard").get_json()["runs"]
    assert [r["run_id"] for r in board] == [run["run_id"]]


def test_trainer_crash_mid_run_keeps_the_metrics(client, worker_env, start_worker, scratch_root):
    body = {"dataset_key": SAMPLE, "max_steps": 5000, "num_epochs": 100, "checkpoint_every_n_steps": 10}
    run_id = client.post("/api/tunix/run?mode=async", json=body).get_json()["run_id"]
    start_worker(worker_env(REAL_TRAINER))
    wait_for(lambda: len(metrics_of(client, run_id)["train"]) >= 3, timeout=180)
    # The checkpoint directory goes away under the trainer, as when a disk is lost, and stays
    # gone: whatever orbax recreates is removed again until the trainer gives up.
    checkpoints = next(p for p in scratch_root.glob(f"{run_id}.*") if p.is_dir()) / "checkpoints"  # not its .lock
    deadline = time.monotonic() + 120
    while run_status(client, run_id) == "running" and time.monotonic() < deadline:
        shutil.rmtree(checkpoints, ignore_errors=True)
        if not checkpoints.is_symlink():
            try:
                checkpoints.symlink_to("/proc/tunix-rt-no-such-directory")
            except FileExistsError:
                pass
        time.sleep(0.05)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["status"] == "failed" and run["exit_code"] == 1
    assert run["error_message"].startswith("trainer exited with code 1: ")
    assert "checkpoint" in run["error_message"].lower()
    kept = metrics_of(client, run_id)["train"]
    assert len(kept) >= 3 and kept[-1]["step"] < 5000


def test_a_run_can_start_from_an_exported_checkpoint(client, app, artifacts_root):
    app.config["TRAIN_COMMAND"] = REAL_TRAINER
    app.config["RUN_TIMEOUT_SECONDS"] = 600.0  # two real runs in one request each, on a busy CI host
    first = client.post("/api/tunix/run?mode=sync", json={
        "dataset_key": SAMPLE, "max_steps": 30, "learning_rate": 0.003, "eval_fraction": 0}).get_json()
    assert first["status"] == "completed", first["error_message"]
    checkpoint = artifacts_root / first["run_id"] / "model"
    assert {p.name for p in checkpoint.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}

    plan = client.post("/api/tunix/run?mode=dry_run", json={
        "dataset_key": SAMPLE, "model_id": str(checkpoint)}).get_json()
    assert plan["status"] == "completed" and plan["result"]["tokenizer_vocab_size"] == 264

    second = client.post("/api/tunix/run?mode=sync", json={
        "dataset_key": SAMPLE, "model_id": str(checkpoint), "max_steps": 5, "finetune": "lora",
        "lora_rank": 4, "eval_max_examples": 4, "eval_max_new_tokens": 8}).get_json()
    assert second["status"] == "completed", second["error_message"] or second["stderr_tail"]
    # The base weights were loaded: training resumes near the first run's loss, far below a fresh model's.
    assert second["result"]["first_loss"] < first["result"]["first_loss"] - 1.5
    assert second["result"]["trainable_parameters"] < second["result"]["parameters"] / 2
    # A LoRA model on a checkpoint's own tokenizer is scored with Tunix's sampler too.
    scored = second["result"]["evaluation"]
    assert scored["error"] is None and scored["examples"] == 4
    assert scored["before"]["examples"] == scored["after"]["examples"] == 4

    # Registered, the first run's model trains the same run again from the registry, on the same weights.
    registered = client.post("/api/models/arith/versions", json={"run_id": first["run_id"]}).get_json()
    assert {f["path"] for f in registered["files"]} == {"config.json", "model.safetensors", "tokenizer.json"}
    # A dry run plans from the version without its weights (its config, tokenizer and the weights' headers).
    plan = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": "models:/arith/1"})
    assert plan.status_code == 200 and plan.get_json()["status"] == "completed", plan.get_json()
    assert plan.get_json()["result"]["tokenizer_vocab_size"] == 264
    assert plan.get_json()["result"]["model"]["parameters"] == first["result"]["parameters"]
    assert client.post("/api/tunix/run?mode=dry_run", json={
        "dataset_key": SAMPLE, "model_id": "models:/arith@nothing"}).status_code == 422
    again = client.post("/api/tunix/run?mode=sync", json={
        "dataset_key": SAMPLE, "model_id": "models:/arith/1", "max_steps": 5, "finetune": "lora",
        "lora_rank": 4, "eval_max_examples": 4, "eval_max_new_tokens": 8}).get_json()
    assert again["status"] == "completed", again["error_message"] or again["stderr_tail"]
    assert again["model_version"] == "models:/arith/1"
    assert again["result"]["first_loss"] == pytest.approx(second["result"]["first_loss"], rel=1e-4)
    # A LoRA run's version holds its merged model and its adapter.
    lora = client.post("/api/models/arith/versions", json={"run_id": again["run_id"]}).get_json()
    paths = {f["path"] for f in lora["files"]}
    assert {"config.json", "model.safetensors"} <= paths and any(p.startswith("adapter/") for p in paths)
    assert lora["lineage"]["base"]["version"] == "models:/arith/1"


def test_missing_training_stack_is_a_clear_failure(tmp_path):
    (tmp_path / "run_config.json").write_text("{}")
    code = ("import sys; sys.modules['tunix'] = None; from app.trainer.__main__ import main; "
            f"sys.exit(main([{str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 3
    assert "the Tunix training stack is not installed (tunix is missing)" in proc.stderr
    assert json.loads(proc.stdout)["event"] == "error"


def _trainers_for(run_id: str) -> list[int]:
    """The trainers training the run (their scratch folder is named after it)."""
    return processes_mentioning(f"{run_id}.")


def test_a_run_whose_worker_is_killed_resumes_on_another_host_from_its_stored_checkpoint(
        s3_store, client, worker_env, start_worker, tmp_path):
    """Two hosts that share only Postgres and the bucket: the second fetches the first's last stored
    Orbax checkpoint and Tunix resumes from it, with the scores from before training kept."""
    lease = {"TUNIX_HEARTBEAT_SECONDS": "1", "TUNIX_LEASE_TIMEOUT_SECONDS": "5", **s3_store.env}
    body = {"dataset_key": SAMPLE, "max_steps": 3000, "num_epochs": 100, "checkpoint_every_n_steps": 20,
            "eval_every_n_steps": 1000, "eval_max_examples": 16, "max_attempts": 2}
    run_id = client.post("/api/tunix/run?mode=async", json=body).get_json()["run_id"]
    doomed = start_worker(worker_env(REAL_TRAINER, TUNIX_SCRATCH_DIR=str(tmp_path / "host-a"), **lease))
    manifests = f"{s3_store.prefix}/{run_id}/.manifests/checkpoint-"

    def stored_steps() -> list[int]:
        listing = s3_store.server.client().list_objects_v2(Bucket=s3_store.bucket, Prefix=manifests)
        return sorted(int(item["Key"][len(manifests):-len(".json")]) for item in listing.get("Contents", []))

    # Orbax also saves the first step; wait for a step of the interval's own to be stored.
    wait_for(lambda: any(step >= 20 for step in stored_steps()), timeout=240)
    assert _trainers_for(run_id), "the trainer is running"
    doomed.kill()
    doomed.wait()
    wait_for(lambda: not _trainers_for(run_id), timeout=15)  # no orphan keeps training

    start_worker(worker_env(REAL_TRAINER, TUNIX_SCRATCH_DIR=str(tmp_path / "host-b"), **lease))
    wait_for(lambda: client.get(f"/api/tunix/runs/{run_id}").get_json()["attempt"] == 2, timeout=60)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["recoveries"] == 1
    # Resumed from the stored checkpoint rather than from step 0; cancel it to keep the test short.
    wait_for(lambda: (client.get(f"/api/tunix/runs/{run_id}").get_json()["progress"] or {}).get(
        "resumed_from_stored_step") and client.get(f"/api/tunix/runs/{run_id}").get_json()["progress"]["step"]
        > client.get(f"/api/tunix/runs/{run_id}").get_json()["progress"]["resumed_from_stored_step"] + 5,
        timeout=180)
    client.post(f"/api/tunix/runs/{run_id}/cancel")
    wait_for(lambda: run_status(client, run_id) == "cancelled", timeout=120)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    summary, resumed = run["result"], run["progress"]["resumed_from_stored_step"]
    assert summary["resumed_from_step"] == resumed >= 20 and summary["stopped_early"]
    assert resumed % 20 == 0
    assert f"platform: resumed from step {resumed} (stored checkpoint)" in client.get(
        f"/runs/{run_id}/log.txt").get_data(as_text=True)
    # One loss curve: the first host's steps, then the second's from the step after the checkpoint.
    steps = [p["step"] for p in metrics_of(client, run_id)["train"]]
    assert steps == sorted(set(steps)) and steps[:20] == list(range(1, 21)) and resumed + 1 in steps
    # A cancelled run is not scored after training; the before scores of its first attempt came with the checkpoint.
    assert summary["evaluation"]["after"] is None and summary["evaluation"]["before"]["examples"] == 16
    assert not _trainers_for(run_id)
    assert run_status(client, run_id) not in ("running", "cancelling")


def test_cancel_real_training_saves_a_checkpoint_and_ends_the_group(client, worker_env, start_worker,
                                                                    artifacts_root):
    body = {"dataset_key": SAMPLE, "max_steps": 5000, "num_epochs": 100, "checkpoint_every_n_steps": 100000,
            "eval_fraction": 0}
    run_id = client.post("/api/tunix/run?mode=async", json=body).get_json()["run_id"]
    start_worker(worker_env(REAL_TRAINER, TUNIX_KILL_GRACE_SECONDS="20"))
    wait_for(lambda: len(metrics_of(client, run_id)["train"]) >= 5, timeout=240)
    assert client.post(f"/api/tunix/runs/{run_id}/cancel").status_code == 202
    wait_for(lambda: run_status(client, run_id) == "cancelled", timeout=60)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    assert run["error_message"] == "cancelled by user" and run["exit_code"] == 0  # it stopped on SIGTERM
    assert run["result"]["stopped_early"] and run["result"]["steps"] < 5000
    checkpoints = [p.name for p in (artifacts_root / run_id / "checkpoints").iterdir()]
    assert str(run["result"]["steps"]) in checkpoints  # the final checkpoint of the stop
    assert not _trainers_for(run_id)
    assert client.post(f"/api/tunix/runs/{run_id}/cancel").status_code == 409


def test_a_damaged_checkpoint_is_named_as_such(tmp_path):
    from app.datasets.sample import sample_examples
    from app.execution.run_directory import write_run_directory
    from app.runs.validation import validate_run_config

    config = validate_run_config({"dataset_key": SAMPLE, "max_steps": 4, "checkpoint_every_n_steps": 2,
                                  "eval_fraction": 0})
    run_dir = write_run_directory(tmp_path / "damaged", "damaged", config, sample_examples())
    assert subprocess.run([*REAL_TRAINER, str(run_dir)], cwd=ROOT, capture_output=True).returncode == 0
    for path in (run_dir / "checkpoints" / "4").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0not a checkpoint")
    (run_dir / "run_config.json").write_text(json.dumps({**config, "run_id": "damaged", "max_steps": 8}))
    again = subprocess.run([*REAL_TRAINER, str(run_dir)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 1
    error = next(json.loads(line) for line in again.stdout.splitlines() if line.startswith('{"event":"error"'))
    assert "could not read the checkpoint saved at step 4" in error["message"]
    assert "Delete that folder" in error["message"]


def test_a_short_run_is_evaluated_after_its_last_step_and_says_what_its_figures_rest_on(client, app):
    """18 steps with an eval every 20: the eval loss is measured at step 0 and after step 18, never only
    untrained; the page says where each figure comes from."""
    app.config["TRAIN_COMMAND"] = REAL_TRAINER
    app.config["RUN_TIMEOUT_SECONDS"] = 600.0  # a real run inside the request, on a busy CI host
    run = client.post("/api/tunix/run?mode=sync", json={
        "dataset_key": SAMPLE, "max_steps": 18, "eval_every_n_steps": 20, "eval_max_new_tokens": 8}).get_json()
    assert run["status"] == "completed", run["error_message"] or run["stderr_tail"]
    assert [p["step"] for p in metrics_of(client, run["run_id"])["eval"]] == [0, 18]
    result = run["result"]
    assert result["final_eval_step"] == 18
    before, after = result["evaluation"]["before"], result["evaluation"]["after"]
    assert before["includes_compilation"] is True and after["includes_compilation"] is False
    assert before["batch_seconds"] > 0 and before["batch_size"] == 16
    assert run["progress"]["phase"] == "storing" and run["progress"]["eval_step"] == 18

    page = client.get(f"/runs/{run['run_id']}").get_data(as_text=True)
    assert f"{result['final_eval_loss']:.4f} (at step 18)" in page
    assert "not measured after the last step" not in page
    assert "24 answers scored" in page and "all it holds (200 were asked)" in page
    assert "includes compiling generation" in page and "95 % interval" in page
    assert "Answer match</dt>" in page and "Exact match</dt>" in page  # what the two rates mean
    # The plan and the page both say what 200 scored examples and a cadence of 20 come to here.
    assert "eval_every_n_steps: 20 is more than the 18 steps" in page
    assert "eval_max_examples: 200 asked, but the held-out split (0.1 of 240 examples) holds 24" in page
    predictions = client.get(f"/api/tunix/runs/{run['run_id']}/evaluation?phase=before&limit=24").get_json()
    assert all("\ufffd" not in p["prediction"] for p in predictions["examples"]), "bytes are escaped, not boxes"
