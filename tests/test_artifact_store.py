"""Runs' files in an object store: a real S3 protocol server on loopback (moto's), a web process and
workers that share nothing but Postgres and the bucket, each worker with its own scratch folder.

Production uses a real bucket (S3, GCS, or an S3-compatible server); the project's code path is the same.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.helpers import SAMPLE, fake_trainer_command, run_json, run_status, scratch_file, wait_for

MODEL_BYTES = 20 * 1024 * 1024  # above the part size: stored in several parts


def _objects(s3_store, run_id: str) -> dict[str, bytes]:
    """Every object of the run in the bucket, by its path relative to the run."""
    client = s3_store.server.client()
    prefix = f"{s3_store.prefix}/{run_id}/"
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_store.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=s3_store.bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix):]] = body
    return found


def _host(worker_env, s3_store, tmp_path: Path, name: str, command: list[str], **extra: str) -> dict[str, str]:
    """A worker of its own host: the bucket, and a scratch folder no other worker sees."""
    return worker_env(command, TUNIX_SCRATCH_DIR=str(tmp_path / name), **s3_store.env, **extra)


def _log(client, run_id: str) -> str:
    return client.get(f"/runs/{run_id}/log.txt").get_data(as_text=True)


def test_a_run_is_stored_in_the_bucket_and_the_web_serves_every_file_from_it(
        s3_store, client, app, worker_env, start_worker, tmp_path, artifacts_root):
    run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    command = fake_trainer_command("--artifacts", "--evaluate", "--model-bytes", str(MODEL_BYTES))
    for host in ("host-a", "host-b"):
        start_worker(_host(worker_env, s3_store, tmp_path, host, command))
    wait_for(lambda: run_status(client, run_id) in ("completed", "failed"), timeout=90)
    run = run_json(client, run_id)
    assert run["status"] == "completed", run["error_message"]
    assert run["artifacts_url"] == s3_store.url

    stored = _objects(s3_store, run_id)
    assert len(stored["model/model.safetensors"]) == MODEL_BYTES
    assert {"summary.json", "metrics.json", "predictions.jsonl", "run_config.json", "dataset.jsonl", "run.log",
            "model/config.json", "model/tokenizer.json", ".manifests/final.json",
            ".manifests/checkpoint-0000000003.json"} <= set(stored)
    assert "fake trainer: 240 examples" in stored["run.log"].decode()
    # Nothing on a shared disk: the local artifacts root holds nothing, and each host's scratch goes (just
    # after the outcome is written).
    assert not any(artifacts_root.iterdir())
    wait_for(lambda: not any((tmp_path / "host-a").glob(f"{run_id}*"))
             and not any((tmp_path / "host-b").glob(f"{run_id}*")), timeout=30)

    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f"Stored in <code>{s3_store.url}/{run_id}/</code>" in page
    manifest = json.loads(stored[".manifests/final.json"])["files"]
    for relative in manifest:
        assert f"/runs/{run_id}/artifacts/{relative}" in page
        response = client.get(f"/runs/{run_id}/artifacts/{relative}")
        assert response.status_code == 200 and response.data == stored[relative], relative
    assert "checkpoints/3/" in page

    # The API lists the same files with their checksums, and serves each to a token.
    listed = client.get(f"/api/tunix/runs/{run_id}/artifacts").get_json()
    assert listed["artifacts_url"] == s3_store.url
    assert {f["path"] for f in listed["files"]} == set(manifest) | {
        p for p in stored if p.startswith("checkpoints/")}
    assert listed["total_bytes"] == sum(f["size_bytes"] for f in listed["files"])
    for entry in listed["files"]:
        assert entry["sha256"] == hashlib.sha256(stored[entry["path"]]).hexdigest()
    fetched = client.get(f"/api/tunix/runs/{run_id}/artifacts/model/model.safetensors")
    assert fetched.status_code == 200 and fetched.data == stored["model/model.safetensors"]
    assert fetched.headers["ETag"] == f'"{hashlib.sha256(fetched.data).hexdigest()}"'
    assert client.get(f"/api/tunix/runs/{run_id}/artifacts/model/../../x").status_code == 404
    assert app.test_client().get(f"/api/tunix/runs/{run_id}/artifacts/summary.json").status_code == 401

    big = stored["model/model.safetensors"]
    ranged = client.get(f"/runs/{run_id}/artifacts/model/model.safetensors", headers={"Range": "bytes=9000000-9000099"})
    assert ranged.status_code == 206 and ranged.data == big[9000000:9000100]
    assert ranged.headers["Content-Range"] == f"bytes 9000000-9000099/{MODEL_BYTES}"
    tail = client.get(f"/runs/{run_id}/artifacts/model/model.safetensors", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.data == big[-10:]
    beyond = client.get(f"/runs/{run_id}/artifacts/model/model.safetensors", headers={"Range": f"bytes={MODEL_BYTES}-"})
    assert beyond.status_code == 416

    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/runs/{run_id}/archive/model.zip").data))
    prefix = f"run-{run_id[:8]}-model/"
    assert sorted(archive.namelist()) == sorted(prefix + p[len("model/"):] for p in stored if p.startswith("model/"))
    for name in archive.namelist():
        assert archive.read(name) == stored["model/" + name[len(prefix):]]
    step = zipfile.ZipFile(io.BytesIO(client.get(f"/runs/{run_id}/archive/checkpoints/3.zip").data))
    assert len(step.namelist()) == 3

    # With presigning, a download is a short-lived URL of the bucket itself; Range works there too.
    app.config["ARTIFACTS_PRESIGN"] = True
    redirect = client.get(f"/runs/{run_id}/artifacts/model/model.safetensors")
    assert redirect.status_code == 302 and redirect.headers["Location"].startswith(s3_store.server.endpoint)
    assert "X-Amz-Expires=300" in redirect.headers["Location"]
    with urllib.request.urlopen(redirect.headers["Location"], timeout=30) as fetched:
        assert fetched.read() == big
    partial = urllib.request.Request(redirect.headers["Location"], headers={"Range": "bytes=5-14"})
    with urllib.request.urlopen(partial, timeout=30) as fetched:
        assert fetched.status == 206 and fetched.read() == big[5:15]


def test_a_run_whose_worker_is_killed_resumes_on_another_host_from_its_stored_checkpoint(
        s3_store, client, worker_env, start_worker, tmp_path):
    hold = tmp_path / "release-the-first-host"
    command = fake_trainer_command("--steps", "12", "--checkpoint-every", "3", "--hold-at-step", "7",
                                   "--wait-for", str(hold), "--artifacts")
    lease = {"TUNIX_HEARTBEAT_SECONDS": "0.5", "TUNIX_LEASE_TIMEOUT_SECONDS": "3"}
    run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "max_attempts": 2}).get_json()["run_id"]
    doomed = start_worker(_host(worker_env, s3_store, tmp_path, "host-a", command, **lease))
    # Its second checkpoint (step 6) is in the bucket, and its steps up to 7 (where it holds) are recorded.
    wait_for(lambda: {".manifests/checkpoint-0000000003.json", ".manifests/checkpoint-0000000006.json"}
             <= set(_objects(s3_store, run_id)), timeout=60)
    wait_for(lambda: [p["step"] for p in client.get(f"/api/tunix/runs/{run_id}/metrics").get_json()["train"]]
             == list(range(1, 8)), timeout=30)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()

    start_worker(_host(worker_env, s3_store, tmp_path, "host-b", command, **lease))
    wait_for(lambda: run_status(client, run_id) in ("completed", "failed"), timeout=90)
    run = run_json(client, run_id)
    assert run["status"] == "completed", run["error_message"]
    assert run["recoveries"] == 1 and run["attempt"] == 2
    assert run["progress"]["resumed_from_stored_step"] == 6
    log = _log(client, run_id)
    assert "platform: resumed from step 6 (stored checkpoint)" in log
    assert "fake trainer: resuming from the checkpoint at step 6" in log
    assert "Resumed from step 6 (stored checkpoint)." in client.get(f"/runs/{run_id}").get_data(as_text=True)
    # One loss curve: steps 1 to 7 from the first host, 7 to 12 from the second, none from step 0 again.
    series = client.get(f"/api/tunix/runs/{run_id}/metrics").get_json()["train"]
    assert [p["step"] for p in series] == list(range(1, 13))
    # The second host's scratch goes once it is done; the dead host's disk was never read again.
    wait_for(lambda: not any((tmp_path / "host-b").glob(f"{run_id}*")), timeout=30)
    assert any((tmp_path / "host-a").glob(f"{run_id}.*/checkpoints/6"))


def test_an_outage_of_the_store_is_waited_out_and_a_longer_one_fails_the_run(
        s3_store, client, worker_env, start_worker, tmp_path, scratch_root):
    server = s3_store.server
    for budget, outcome in (("120", "completed"), ("2", "failed")):
        hold = tmp_path / f"release-{budget}"
        run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
        worker = start_worker(_host(worker_env, s3_store, tmp_path, f"host-{budget}",
                                    fake_trainer_command("--artifacts", "--wait-for", str(hold)),
                                    TUNIX_ARTIFACTS_RETRY_SECONDS=budget, TUNIX_HEARTBEAT_SECONDS="0.5"),
                              "--exit-when-idle")
        wait_for(lambda: scratch_file(tmp_path / f"host-{budget}", run_id, "pids.json"), timeout=60)
        server.stop()
        try:
            hold.touch()
            if outcome == "completed":
                # The page says the store is being waited for; then the store comes back.
                wait_for(lambda: "trying again" in str(((run_json(client, run_id)["progress"] or {})
                                                         .get("storing") or {}).get("retrying")), timeout=60)
                page = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
                assert re.search(r"Storing files: \d+ of 12, ", page) and "the store did not answer; trying again" in page
            else:
                wait_for(lambda: run_status(client, run_id) == "failed", timeout=60)
        finally:
            server.start()
        wait_for(lambda: run_status(client, run_id) in ("completed", "failed"), timeout=120)
        run = run_json(client, run_id)
        assert run["status"] == outcome, run["error_message"]
        if outcome == "completed":
            assert len(_objects(s3_store, run_id)) == 14  # 12 files and the two manifests
            assert "model/model.safetensors" in client.get(f"/runs/{run_id}").get_data(as_text=True)
        else:
            message = run["error_message"]
            assert message.startswith("could not store the run's files: the artifact store "
                                      f"({s3_store.url}) was unreachable or failing for 2 s"), message
            assert ".manifests/final.json" not in _objects(s3_store, run_id)
        worker.wait(timeout=60)  # gone before the next run is queued: that one is for the next worker


def test_a_changed_object_is_refused_on_download_and_on_resume(s3_store, client, app, tmp_path):
    from prometheus_client import REGISTRY

    from app.artifacts.run_store import RunStore, StoringProgress
    from app.artifacts.store import StoreSettings

    def counted(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    uploaded, refusals = counted("tunix_artifact_bytes_total", direction="upload"), counted(
        "tunix_artifact_integrity_refusals_total")

    app.config["TRAIN_COMMAND"] = fake_trainer_command("--artifacts", "--model-bytes", str(MODEL_BYTES))
    run_id = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    assert run_status(client, run_id) == "completed"
    client_s3 = s3_store.server.client()
    key = f"{s3_store.prefix}/{run_id}/model/model.safetensors"
    client_s3.put_object(Bucket=s3_store.bucket, Key=key, Body=b"\x07" * MODEL_BYTES)  # same size, other bytes
    refused = client.get(f"/runs/{run_id}/artifacts/model/model.safetensors")
    assert refused.status_code == 502
    assert "is not what this run stored" in refused.get_data(as_text=True)
    refused = client.get(f"/api/tunix/runs/{run_id}/artifacts/model/model.safetensors")
    assert refused.status_code == 502 and "was changed after it was stored" in refused.get_json()["error"]
    assert client.get(f"/runs/{run_id}/archive/model.zip").status_code == 502
    assert client.get(f"/runs/{run_id}/artifacts/summary.json").status_code == 200  # the others still are
    # A sync run stores through this process: its bytes and the refusals are counted for /metrics.
    assert counted("tunix_artifact_bytes_total", direction="upload") - uploaded >= MODEL_BYTES
    assert counted("tunix_artifact_integrity_refusals_total") - refusals == 3
    assert "tunix_artifact_integrity_refusals_total" in client.get("/metrics").get_data(as_text=True)

    # A resume refuses a changed checkpoint and takes the one before it.
    settings = StoreSettings.from_config(app.config)
    scratch = tmp_path / "steps"
    for step in (3, 6):
        (scratch / "checkpoints" / str(step)).mkdir(parents=True)
        (scratch / "checkpoints" / str(step) / "state").write_bytes(bytes([step]) * 5000)
    files = RunStore(settings, settings.url, "resumed-run")
    for step in (3, 6):
        files.store_checkpoint(scratch, step, StoringProgress())
    client_s3.put_object(Bucket=s3_store.bucket, Key=f"{s3_store.prefix}/resumed-run/checkpoints/6/state",
                         Body=b"\0" * 5000)
    restored = files.restore_latest_checkpoint(tmp_path / "fresh")
    assert restored.step == 3
    assert restored.refused == ["the stored checkpoint at step 6 was refused: resumed-run/"
                                "checkpoints/6/state was changed after it was stored (its ETag is no longer "
                                f"{json.loads(_manifest(client_s3, s3_store, 6))['files']['checkpoints/6/state']['etag']})"]
    assert (tmp_path / "fresh" / "checkpoints" / "3" / "state").read_bytes() == bytes([3]) * 5000
    assert not (tmp_path / "fresh" / "checkpoints" / "6").exists()


def _manifest(client_s3, s3_store, step: int) -> bytes:
    key = f"{s3_store.prefix}/resumed-run/.manifests/checkpoint-{step:010d}.json"
    return client_s3.get_object(Bucket=s3_store.bucket, Key=key)["Body"].read()


def test_bytes_damaged_in_place_are_found_by_their_checksum(tmp_path):
    """A local store: the file keeps its size and time (so its ETag), only its bytes change."""
    from app.artifacts import store as object_store
    from app.artifacts.run_store import RunStore, StoringProgress
    from app.artifacts.store import IntegrityError, StoreSettings

    settings = StoreSettings(url=str(tmp_path / "store"))
    scratch = tmp_path / "scratch"
    (scratch / "checkpoints" / "5").mkdir(parents=True)
    (scratch / "checkpoints" / "5" / "state").write_bytes(os.urandom(3 * 1024 * 1024))
    files = RunStore(settings, settings.url, "local-run")
    files.store_checkpoint(scratch, 5, StoringProgress())
    stored = tmp_path / "store" / "local-run" / "checkpoints" / "5" / "state"
    times = stored.stat()
    with stored.open("r+b") as damaged:
        damaged.seek(2 * 1024 * 1024)
        damaged.write(b"\xff" * 16)
    os.utime(stored, ns=(times.st_atime_ns, times.st_mtime_ns))

    restored = files.restore_latest_checkpoint(tmp_path / "fresh")
    assert restored.step is None and len(restored.refused) == 1
    assert "the stored checkpoint at step 5 was refused: local-run/checkpoints/5/state: SHA-256 " in restored.refused[0]
    entry = files.find("checkpoints/5/state").entry
    received = bytearray()
    with pytest.raises(IntegrityError):
        for chunk in object_store.stream(files.store, entry):
            received += chunk
    assert len(received) < entry.size  # a reader never gets the whole damaged file


def test_no_name_reaches_another_run_s_files(s3_store, client, app):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--artifacts")
    first = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    other = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    assert client.get(f"/runs/{other}/artifacts/summary.json").status_code == 200
    for hostile in (f"../{other}/summary.json", f"..%2F{other}%2Fsummary.json", f"%2e%2e/{other}/summary.json",
                    f"model/../../{other}/summary.json", f"/{s3_store.prefix}/{other}/summary.json",
                    f"checkpoints/3/../../../{other}/model/config.json", ".manifests/final.json"):
        assert client.get(f"/runs/{first}/artifacts/{hostile}", follow_redirects=True).status_code == 404, hostile
    assert client.get(f"/runs/{first}/artifacts/run.log%00.txt").status_code == 400  # refused before routing
    for hostile in (f"../{other}/model", f"model/../../{other}/model", ".manifests"):
        assert client.get(f"/runs/{first}/archive/{hostile}.zip").status_code == 404, hostile


def test_keys_are_checked_before_they_reach_the_store():
    from app.artifacts.store import UnsafeKey, join_key

    assert join_key("run", "model/config.json") == "run/model/config.json"
    for bad in ("../x", "a/../b", "a//b", "/a", "a\\b", "a\x00b", "a\nb", ".", ""):
        with pytest.raises(UnsafeKey):
            join_key("run", bad)


def test_a_run_keeps_its_store_when_the_setting_changes(s3_store, client, app):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--artifacts")
    old = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    app.config["ARTIFACTS_URL"] = f"{s3_store.url}-moved"
    new = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    assert run_json(client, old)["artifacts_url"] == s3_store.url
    assert run_json(client, new)["artifacts_url"] == f"{s3_store.url}-moved"
    for run_id in (old, new):
        assert client.get(f"/runs/{run_id}/artifacts/summary.json").status_code == 200
    assert f"{s3_store.url}/{old}/" in client.get(f"/runs/{old}").get_data(as_text=True)


def test_gc_keeps_the_last_checkpoint_of_old_finished_runs_and_never_touches_active_ones(s3_store, client, app,
                                                                                          worker_env, start_worker,
                                                                                          tmp_path):
    from sqlalchemy import text

    from app.extensions import db

    app.config["TRAIN_COMMAND"] = fake_trainer_command("--steps", "9", "--checkpoint-every", "3", "--artifacts")
    old, recent = (client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE}).get_json()["run_id"]
                   for _ in range(2))
    hold = tmp_path / "release"
    active = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    start_worker(_host(worker_env, s3_store, tmp_path, "host", fake_trainer_command(
        "--steps", "9", "--checkpoint-every", "3", "--hold-at-step", "7", "--wait-for", str(hold))))
    wait_for(lambda: ".manifests/checkpoint-0000000006.json" in _objects(s3_store, active), timeout=60)
    db.session.execute(text("UPDATE tunix_runs SET completed_at = now() - interval '30 days' WHERE id IN (:a, :b)"),
                       {"a": old, "b": active})
    db.session.commit()

    def steps(run_id: str) -> list[str]:
        return sorted({k.split("/")[1] for k in _objects(s3_store, run_id) if k.startswith("checkpoints/")})

    assert steps(old) == steps(recent) == ["6", "9"]  # the store keeps the newest two while a run trains
    result = app.test_cli_runner().invoke(args=["artifacts", "gc"])
    assert result.exit_code == 0, result.output
    assert "1 checkpoints deleted; freed 2.9 KB (3000 bytes)" in result.output
    assert steps(old) == ["9"] and steps(recent) == ["6", "9"] and steps(active) == ["3", "6"]
    assert "checkpoints/9/" in client.get(f"/runs/{old}").get_data(as_text=True)
    again = app.test_cli_runner().invoke(args=["artifacts", "gc", "--older-than-days", "0", "--dry-run"])
    assert "would free" in again.output and steps(recent) == ["6", "9"]
    hold.touch()
    wait_for(lambda: run_status(client, active) == "completed", timeout=60)


def test_the_scores_beside_each_checkpoint_are_stored_once_while_unchanged(tmp_path):
    """Every step's manifest names the before-training scores a resume needs; stored again for each step,
    an older step's manifest would no longer match them (a local store's ETag moves with each write)."""
    from app.artifacts.run_store import RunStore, StoringProgress
    from app.artifacts.store import StoreSettings

    settings = StoreSettings(url=str(tmp_path / "store"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "evaluation_before.json").write_text('{"answer_match": 0.25}')
    files = RunStore(settings, settings.url, "scored-run")
    for step in (3, 6):
        (scratch / "checkpoints" / str(step)).mkdir(parents=True)
        (scratch / "checkpoints" / str(step) / "state").write_bytes(bytes([step]) * 100)
        files.store_checkpoint(scratch, step, StoringProgress())
    manifests = tmp_path / "store" / "scored-run" / ".manifests"
    entries = [json.loads((manifests / f"checkpoint-{step:010d}.json").read_text())["files"]["evaluation_before.json"]
               for step in (3, 6)]
    assert entries[0] == entries[1]
    stored = tmp_path / "store" / "scored-run" / "evaluation_before.json"
    written = stored.stat().st_mtime_ns
    files.store_final(scratch, files.final_files(scratch), StoringProgress())
    assert stored.stat().st_mtime_ns == written
    (scratch / "evaluation_before.json").write_text('{"answer_match": 0.5}')  # changed: stored again
    files.store_checkpoint(scratch, 6, StoringProgress())
    assert json.loads(stored.read_text()) == {"answer_match": 0.5}
    assert RunStore(settings, settings.url, "scored-run").restore_latest_checkpoint(tmp_path / "fresh").step == 6
