"""The model registry and its gates, end to end: runs trained by the stand-in trainer (whose scores follow the
learning rate: answer_match = learning_rate x 100 on 100 scored examples), registered, aliased, used as base
models by workers, and judged as candidates."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests.helpers import SAMPLE, fake_trainer_command, make_user, run_json, run_status, sign_in, wait_for

TRAIN = fake_trainer_command("--artifacts", "--evaluate", "--eval-cap", "100")


@pytest.fixture
def app_config(app_config):
    app_config["TRAIN_COMMAND"] = TRAIN
    return app_config


@pytest.fixture
def admin(app):
    return sign_in(app.test_client(), make_user("boss", admin=True))


def _trained(client, learning_rate: float, **extra) -> str:
    """A completed sync run on the sample dataset; its id."""
    response = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE, "learning_rate": learning_rate,
                                                              **extra})
    assert response.status_code == 200, response.get_json()
    run = response.get_json()
    assert run["status"] == "completed", run["error_message"]
    return run["run_id"]


def _register(client, name: str, run_id: str, **extra):
    return client.post(f"/api/models/{name}/versions", json={"run_id": run_id, **extra})


def _gate(client, name: str, **rule):
    response = client.post(f"/api/models/{name}/gates", json={"metric": "answer_match", "eval_dataset_key": SAMPLE,
                                                              **rule})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_two_runs_registered_a_champion_and_candidates_judged_by_the_gates(client, admin):
    first, second = _trained(client, 0.006), _trained(client, 0.008)
    v1 = _register(client, "qa", first)
    assert v1.status_code == 201, v1.get_json()
    v1 = v1.get_json()
    assert (v1["version"], v1["ref"]) == (1, "models:/qa/1")
    assert v1["scores"]["answer_match"] == 0.6 and v1["scores"]["examples"] == 100
    assert v1["lineage"]["base"] == {"kind": "preset", "id": "tiny"} and v1["lineage"]["dataset_key"] == SAMPLE
    assert {f["path"] for f in v1["files"]} == {"config.json", "model.safetensors", "tokenizer.json"}
    v2 = _register(client, "qa", second, alias="staging").get_json()
    assert v2["version"] == 2 and v2["digest"] != v1["digest"]

    # champion is protected: a member may not move it, an admin may (no gates yet, so nothing to pass).
    refused = client.put("/api/models/qa/aliases/champion", json={"version": 2, "reason": "best so far"})
    assert refused.status_code == 403 and refused.get_json()["details"] == {"alias": "is protected"}
    moved = admin.put("/api/models/qa/aliases/champion", json={"version": 2, "reason": "best so far"})
    assert moved.status_code == 200 and moved.get_json()["protected"] is True

    # A gate: no worse than the champion (0.80 on 100 examples) beyond the noise, and a floor of 0.5.
    gate = _gate(client, "qa", max_drop=0, floor=0.5)
    worse = _trained(client, 0.006, candidate_for="qa", seed=1)  # 0.60: a regression of 0.20, far past the noise
    close = _trained(client, 0.0078, candidate_for="qa")  # 0.78: within what 100 examples can resolve
    better = _trained(client, 0.009, candidate_for="qa")

    report = client.get(f"/api/tunix/runs/{worse}/gates").get_json()
    assert report["passed"] is False and report["candidate_for"] == "qa"
    (verdict,) = report["verdicts"]
    assert verdict["gate_id"] == gate["id"] and verdict["passed"] is False
    assert verdict["baseline_version"] == 2 and verdict["baseline_value"] == 0.8
    assert verdict["candidate_value"] == 0.6 and verdict["delta"] == pytest.approx(-0.2)
    pooled = 0.7
    assert verdict["allowance"] == pytest.approx(1.96 * (pooled * (1 - pooled) * (2 / 100)) ** 0.5)
    assert "more than" in verdict["reason"]
    assert run_status(client, worse) == "completed"  # a failed gate does not fail the run
    page = client.get(f"/runs/{worse}").get_data(as_text=True)
    assert "1 of 1 gate failed: this run completed, but it is worse than qa allows" in page

    report = client.get(f"/api/tunix/runs/{close}/gates").get_json()
    assert report["passed"] is True
    assert report["verdicts"][0]["delta"] == pytest.approx(-0.02)
    assert report["verdicts"][0]["allowance"] > 0.02
    assert client.get(f"/api/tunix/runs/{better}/gates").get_json()["passed"] is True

    # Promotion is guarded by the gates: the failing candidate is refused, with the failing gate named...
    worse_version = _register(client, "qa", worse).get_json()["version"]
    refused = admin.put("/api/models/qa/aliases/champion", json={"version": worse_version})
    assert refused.status_code == 409
    assert list(refused.get_json()["details"]) == [f"gate {gate['id']}"]
    assert "failed" in refused.get_json()["details"][f"gate {gate['id']}"]
    # ... unless an admin overrides, with a reason, which the history keeps.
    assert admin.put("/api/models/qa/aliases/champion",
                     json={"version": worse_version, "override": True}).status_code == 422
    assert admin.put("/api/models/qa/aliases/champion", json={
        "version": worse_version, "override": True, "reason": "the eval set is stale"}).status_code == 200
    better_version = _register(client, "qa", better).get_json()
    assert "version" in better_version, better_version
    better_version = better_version["version"]
    assert admin.put("/api/models/qa/aliases/champion", json={"version": better_version}).status_code == 200

    history = client.get("/api/models/qa/aliases/champion").get_json()
    assert history["version"] == better_version
    moves = [(m["from_version"], m["to_version"], m["moved_by"], m["override"]) for m in history["history"]]
    assert moves == [(worse_version, better_version, "boss", False), (2, worse_version, "boss", True),
                     (None, 2, "boss", False)]
    assert history["history"][1]["reason"] == "the eval set is stale"
    model_page = client.get("/models/qa").get_data(as_text=True)
    assert "gates overridden:" in model_page and "the eval set is stale" in model_page
    assert "version 2" in model_page and "@staging" in model_page
    # Which version was champion on a date: before any move, none; today, the latest.
    assert client.get("/api/models/qa/aliases/champion?at=2020-01-01").get_json()["version"] is None
    today = history["history"][0]["moved_at"][:10]
    assert client.get(f"/api/models/qa/aliases/champion?at={today}").get_json()["version"] == better_version
    moved_at = history["history"][1]["moved_at"]
    assert client.get("/api/models/qa/aliases/champion", query_string={"at": moved_at}).get_json()["version"] \
        == worse_version
    assert client.get("/api/models/qa/aliases/champion?at=yesterday").status_code == 422
    metrics = client.get("/metrics").get_data(as_text=True)
    for series in ('tunix_gate_verdicts_total{result="failed"}', 'tunix_gate_verdicts_total{result="passed"}',
                   'tunix_model_alias_moves_total{override="true"}', "tunix_model_versions_registered_total"):
        assert series in metrics
    page = client.get(f"/models/qa?alias=champion&at={today}").get_data(as_text=True)
    assert f"was\n  <a href=\"/models/qa/versions/{better_version}\">version {better_version}</a>" in page


def test_the_same_files_registered_twice_are_one_version(client):
    first = _trained(client, 0.005, seed=7)
    twin = _trained(client, 0.005, seed=7)  # the same settings: the stand-in exports the same bytes
    created = _register(client, "twins", first)
    again = _register(client, "twins", first)
    from_twin = _register(client, "twins", twin)
    assert created.status_code == 201 and again.status_code == 200 and from_twin.status_code == 200
    assert created.get_json()["version"] == again.get_json()["version"] == from_twin.get_json()["version"] == 1
    assert client.get("/api/models/twins").get_json()["versions"] == 1


def _version_blob(artifacts_root: Path, version: dict, path: str) -> Path:
    sha = next(f["sha256"] for f in version["files"] if f["path"] == path)
    return artifacts_root / "registry" / "sha256" / sha[:2] / sha


def test_an_alias_is_resolved_when_the_run_is_submitted_and_the_worker_trains_from_that_version(
        client, admin, worker_env, start_worker, artifacts_root):
    v1 = _register(client, "base", _trained(client, 0.004)).get_json()
    v2 = _register(client, "base", _trained(client, 0.007)).get_json()
    assert admin.put("/api/models/base/aliases/champion", json={"version": 1}).status_code == 200
    queued = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "model_id": "models:/base@champion"})
    assert queued.status_code == 202, queued.get_json()
    run_id = queued.get_json()["run_id"]
    # The alias moves before any worker has claimed the run: the run keeps the version it was submitted with.
    assert admin.put("/api/models/base/aliases/champion", json={"version": 2}).status_code == 200
    start_worker(worker_env(TRAIN))
    wait_for(lambda: run_status(client, run_id) in ("completed", "failed"), timeout=60)
    run = run_json(client, run_id)
    assert run["status"] == "completed", run["error_message"]
    assert (run["model_id"], run["model_version"], run["model_digest"]) == (
        "models:/base@champion", "models:/base/1", v1["digest"])
    log = client.get(f"/runs/{run_id}/log.txt").get_data(as_text=True)
    assert "platform: base model models:/base@champion is version models:/base/1" in log
    trained_on = dict(re.findall(r"fake trainer: base file (\S+) sha256 ([0-9a-f]{64})", log))
    assert trained_on == {f["path"]: f["sha256"] for f in v1["files"]}
    assert trained_on != {f["path"]: f["sha256"] for f in v2["files"]}
    # The new version's lineage runs back through version 1 to the preset.
    v3 = _register(client, "base", run_id).get_json()
    assert v3["lineage"]["base"]["version"] == "models:/base/1" and v3["lineage"]["base"]["kind"] == "registry"
    page = client.get(f"/models/base/versions/{v3['version']}").get_data(as_text=True)
    assert page.index("models:/base/3") < page.index("models:/base/1</a>") < page.index("the preset")
    assert run_id in client.get("/api/models/base/versions/1").get_json()["trained_from_it"]
    # A file of the version downloads as registered.
    blob = _version_blob(artifacts_root, v1, "model.safetensors")
    body = client.get("/models/base/versions/1/files/model.safetensors").data
    assert hashlib.sha256(body).hexdigest() == blob.name
    # The whole version as one zip: a checkpoint folder once unpacked.
    import io
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(client.get("/models/base/versions/1/archive.zip").data))
    unpacked = {name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()}
    assert unpacked == {f"base-v1/{f['path']}": f["sha256"] for f in v1["files"]}


def test_a_version_whose_files_changed_fails_the_run_that_trains_from_it(client, artifacts_root):
    version = _register(client, "fragile", _trained(client, 0.003)).get_json()
    blob = _version_blob(artifacts_root, version, "model.safetensors")
    damaged = bytearray(blob.read_bytes())
    damaged[100] ^= 0xFF  # same size, other bytes
    blob.write_bytes(bytes(damaged))
    response = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE, "model_id": "models:/fragile/1"})
    run = response.get_json()
    assert run["status"] == "failed"
    assert run["error_message"].startswith("model version models:/fragile/1 does not match its digest")
    assert "SHA-256" in run["error_message"]


def test_unknown_references_and_candidates_are_refused_naming_the_field(client):
    for model_id, problem in (("models:/nothing@champion", "no registered model named 'nothing'"),
                              ("models:/nothing", "is not a registry reference")):
        response = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "model_id": model_id})
        assert response.status_code == 422
        assert problem in response.get_json()["details"]["model_id"]
    _register(client, "known", _trained(client, 0.002))
    response = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "model_id": "models:/known@gold"})
    assert response.get_json()["details"]["model_id"] == "known has no alias 'gold'"
    response = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "candidate_for": "unknown"})
    assert response.get_json()["details"]["candidate_for"] == "no registered model named 'unknown'"
    _gate(client, "known", floor=0.1, eval_dataset_key=SAMPLE)
    client.post("/api/datasets", json={"name": "other", "examples": [{"prompt": "p", "response": "r"}] * 4})
    response = client.post("/api/tunix/run?mode=async", json={"dataset_key": "other-v1", "candidate_for": "known"})
    assert response.status_code == 422
    assert response.get_json()["details"]["eval_dataset_key"] == f"the gates of known score on {SAMPLE}: set " \
                                                                  "eval_dataset_key to it"
    bad_gate = client.post("/api/models/known/gates", json={"metric": "mean_generated_tokens",
                                                            "eval_dataset_key": "nope", "max_drop": -1})
    assert bad_gate.status_code == 422
    assert set(bad_gate.get_json()["details"]) == {"direction", "eval_dataset_key", "max_drop"}


def test_permissions_on_models_versions_aliases_and_gates(app, client, admin):
    run_id = _trained(client, 0.004)
    assert _register(client, "mine", run_id).status_code == 201
    other = sign_in(app.test_client(), make_user("other"))
    # Another member may read, but not register into, alias, gate or archive someone else's model.
    assert other.get("/api/models/mine").status_code == 200
    for response in (_register(other, "mine", run_id),
                     other.put("/api/models/mine/aliases/staging", json={"version": 1}),
                     other.post("/api/models/mine/gates", json={"metric": "answer_match", "eval_dataset_key": SAMPLE,
                                                                "floor": 0.1}),
                     other.post("/api/models/mine/versions/1/archive")):
        assert response.status_code == 403, response.get_json()
    # The owner moves its own unprotected aliases; protecting one is for admins.
    assert client.put("/api/models/mine/aliases/staging", json={"version": 1}).status_code == 200
    assert client.put("/api/models/mine/aliases/staging", json={"version": 1, "protected": True}).status_code == 403
    assert admin.put("/api/models/mine/aliases/staging", json={"version": 1, "protected": True}).status_code == 200
    assert client.put("/api/models/mine/aliases/staging", json={"version": 1}).status_code == 403
    # Nobody unsigned: 401 on the API, the sign-in page for pages.
    anonymous = app.test_client()
    for path in ("/api/models", "/api/models/mine", "/api/models/mine/versions/1", f"/api/tunix/runs/{run_id}/gates"):
        assert anonymous.get(path).status_code == 401
    assert anonymous.put("/api/models/mine/aliases/staging", json={"version": 1}).status_code == 401
    assert anonymous.get("/models/mine").status_code == 302
    # An aliased version cannot be archived; once free of aliases it can, and leaves the pickers.
    assert client.post("/api/models/mine/versions/1/archive").status_code == 409
    second = _register(client, "mine", _trained(client, 0.006)).get_json()["version"]
    form = client.get("/runs/new").get_data(as_text=True)
    assert "models:/mine/2" in form and '"models:/mine@staging">mine @staging (version 1)' in form
    archived = client.post(f"/api/models/mine/versions/{second}/archive")
    assert archived.status_code == 200 and archived.get_json()["archived_at"]
    assert "models:/mine/2" not in client.get("/runs/new").get_data(as_text=True)


def test_the_pages_register_a_run_and_move_an_alias(client, admin):
    run_id = _trained(client, 0.005)
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f'href="/models/register/{run_id}"' in page
    refused = client.post(f"/models/register/{run_id}", data={"name": "bad name!"})
    assert refused.status_code == 422 and 'id="name-error"' in refused.get_data(as_text=True)
    response = client.post(f"/models/register/{run_id}", data={"name": "paged", "alias": "staging"})
    assert response.status_code == 303 and response.headers["Location"].endswith("/models/paged/versions/1")
    assert "models:/paged/1" in client.get(f"/runs/{run_id}").get_data(as_text=True)
    refused = client.post("/models/paged/aliases", data={"alias": "champion", "version": "1"})
    assert refused.status_code == 403 and "only an admin may move it" in refused.get_data(as_text=True)
    assert admin.post("/models/paged/aliases", data={"alias": "champion", "version": "1",
                                                     "reason": "first"}).status_code == 303
    listing = client.get("/models").get_data(as_text=True)
    assert "@champion → 1" in listing and "@staging → 1" in listing


def _ci(live_server: str, token: str, *args: str, config: dict | None = None, tmp_path: Path | None = None):
    """The CI client, as a CI job runs it: its own process, the server's URL and a token in the environment."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    if config is not None:
        path = tmp_path / "run.json"
        path.write_text(json.dumps(config))
        args = ("run", str(path), "--poll", "0.2", "--timeout", "120", *args)
    env = {**os.environ, "TUNIX_URL": live_server, "TUNIX_TOKEN": token}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "tunix_ci.py"), *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_the_ci_client_exits_by_the_gates_and_by_the_run(client, admin, credentials, live_server, worker_env,
                                                         start_worker, tmp_path, artifacts_root):
    _register(client, "shipped", _trained(client, 0.008))
    assert admin.put("/api/models/shipped/aliases/champion", json={"version": 1}).status_code == 200
    _gate(client, "shipped", max_drop=0.0)
    start_worker(worker_env(TRAIN))
    base = {"dataset_key": SAMPLE, "candidate_for": "shipped"}

    passing = _ci(live_server, credentials.token, config={**base, "learning_rate": 0.0085}, tmp_path=tmp_path)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert re.search(r"^submitted run [0-9a-f-]{36}: http://127\.0\.0\.1:\d+/runs/", passing.stdout, re.M)
    assert re.search(r"^run [0-9a-f]{8}: completed", passing.stdout, re.M)
    assert "PASS gate" in passing.stdout and "1 of 1 gates of shipped passed" in passing.stdout

    failing = _ci(live_server, credentials.token, config={**base, "learning_rate": 0.005}, tmp_path=tmp_path)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "FAIL gate" in failing.stdout and "delta -0.3000" in failing.stdout

    version = _register(client, "broken", _trained(client, 0.001)).get_json()
    blob = _version_blob(artifacts_root, version, "model.safetensors")
    blob.write_bytes(bytes(blob.stat().st_size))  # same size, every byte zero
    broken = _ci(live_server, credentials.token, config={**base, "model_id": "models:/broken/1"}, tmp_path=tmp_path)
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert "the run did not complete: failed: model version models:/broken/1 does not match its digest" \
        in broken.stderr

    refused = _ci(live_server, credentials.token, config={**base, "learning_rate": "fast"}, tmp_path=tmp_path)
    assert refused.returncode == 3 and "answered 422" in refused.stderr and "learning_rate" in refused.stderr
    assert _ci(live_server, "trt_not-a-token", "gates", "00000000-0000-0000-0000-000000000000").returncode == 3
    run_id = re.search(r"submitted run ([0-9a-f-]{36})", failing.stdout)[1]
    again = _ci(live_server, credentials.token, "gates", run_id)
    assert again.returncode == 1 and "FAIL gate" in again.stdout


def test_a_retry_and_a_sweep_keep_to_one_version_whatever_the_alias_does(client, admin):
    _register(client, "pinned", _trained(client, 0.004))
    _register(client, "pinned", _trained(client, 0.007))
    assert admin.put("/api/models/pinned/aliases/champion", json={"version": 1}).status_code == 200
    original = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE, "model_id": "models:/pinned@champion"})
    assert original.get_json()["model_version"] == "models:/pinned/1", original.get_json()
    assert admin.put("/api/models/pinned/aliases/champion", json={"version": 2}).status_code == 200
    retried = client.post(f"/api/tunix/runs/{original.get_json()['run_id']}/retry").get_json()
    assert run_json(client, retried["run_id"])["model_version"] == "models:/pinned/1"
    sweep = client.post("/api/sweeps", json={
        "name": "from the champion", "base": {"dataset_key": SAMPLE, "model_id": "models:/pinned@champion"},
        "space": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
        "objective": {"metric": "final_loss"}, "max_trials": 2, "parallelism": 2})
    assert sweep.status_code == 201, sweep.get_json()
    detail = client.get(f"/api/sweeps/{sweep.get_json()['sweep_id']}").get_json()
    assert detail["base"]["model_id"] == "models:/pinned/2"
    for trial in detail["trials"]:
        assert run_json(client, trial["run_id"])["model_version"] == "models:/pinned/2"


def test_versions_live_in_the_bucket_by_content_copied_within_it_or_streamed_into_it(
        s3_store, app, client, worker_env, start_worker, artifacts_root):
    """The registry in a bucket: a run stored there is copied by the server; a run stored in the local folder
    of an earlier set-up streams in, checked; a worker with nothing but the bucket trains from the version."""
    import hashlib

    s3 = s3_store.server.client()

    def blob(sha256: str) -> bytes:
        return s3.get_object(Bucket=s3_store.bucket,
                             Key=f"{s3_store.prefix}/registry/sha256/{sha256[:2]}/{sha256}")["Body"].read()

    in_bucket = _register(client, "stored", _trained(client, 0.004)).get_json()
    for file in in_bucket["files"]:
        assert hashlib.sha256(blob(file["sha256"])).hexdigest() == file["sha256"]

    app.config["ARTIFACTS_URL"] = ""  # a run of the days before the bucket: its files in the local folder
    local_run = _trained(client, 0.006)
    app.config["ARTIFACTS_URL"] = s3_store.url
    assert (artifacts_root / local_run / "model" / "model.safetensors").is_file()
    streamed = _register(client, "stored", local_run).get_json()
    for file in streamed["files"]:
        local = (artifacts_root / local_run / "model" / file["path"]).read_bytes()
        assert blob(file["sha256"]) == local

    queued = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "model_id": "models:/stored/2"})
    run_id = queued.get_json()["run_id"]
    start_worker(worker_env(TRAIN, **s3_store.env))
    wait_for(lambda: run_status(client, run_id) in ("completed", "failed"), timeout=60)
    run = run_json(client, run_id)
    assert run["status"] == "completed", run["error_message"]
    log = client.get(f"/runs/{run_id}/log.txt").get_data(as_text=True)
    trained_on = dict(re.findall(r"fake trainer: base file (\S+) sha256 ([0-9a-f]{64})", log))
    assert trained_on == {f["path"]: f["sha256"] for f in streamed["files"]}



def test_the_gate_rules_in_each_direction():
    """The rule alone, on scores as versions keep them: a loss (lower is better) with a relative drop and a
    ceiling; a baseline of 0 allows no relative drop; a candidate scored elsewhere cannot be judged."""
    from app.models import ModelGate, ModelVersion
    from app.registry.gates import judge_scores

    loss = ModelGate(metric="final_eval_loss", direction="lower", eval_dataset_key="d", floor=2.0, max_drop=0.1,
                     drop_kind="relative", baseline_alias="champion", confidence_z=1.96)
    champion = ModelVersion(number=4, scores={"final_eval_loss": 1.0, "evaluated_on": "d", "examples": 50})
    within = judge_scores(loss, {"final_eval_loss": 1.09, "evaluated_on": "d", "examples": 50}, champion)
    assert within.passed and within.delta == pytest.approx(0.09) and within.allowance == 0.0
    worse = judge_scores(loss, {"final_eval_loss": 1.2, "evaluated_on": "d"}, champion)
    assert not worse.passed and "more than the 0.1 allowed" in worse.reason
    past_ceiling = judge_scores(loss, {"final_eval_loss": 2.5, "evaluated_on": "d"}, None)
    assert not past_ceiling.passed and "past the ceiling 2" in past_ceiling.reason

    rate = ModelGate(metric="exact_match", direction="higher", eval_dataset_key="d", floor=None, max_drop=0.5,
                     drop_kind="relative", baseline_alias="champion", confidence_z=0.0)
    zero = ModelVersion(number=1, scores={"exact_match": 0.0, "evaluated_on": "d", "examples": 10})
    assert judge_scores(rate, {"exact_match": 0.0, "evaluated_on": "d", "examples": 10}, zero).passed
    elsewhere = judge_scores(rate, {"exact_match": 0.9, "evaluated_on": "other"}, zero)
    assert not elsewhere.passed and "scored on other, not on d" in elsewhere.reason
    no_champion = judge_scores(rate, {"exact_match": 0.1, "evaluated_on": "d"}, None)
    assert no_champion.passed and "no version is @champion yet" in no_champion.reason
