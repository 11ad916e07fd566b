"""Several runs per worker, each on devices of its own: validation, the placement policy, side by side, kill -9."""
from __future__ import annotations

import json
import signal
import time
import uuid
from itertools import combinations

import pytest

from app.contract.device_mesh import HOST_DEVICE_FLAG
from app.queue import registry, store as queue_store
from app.runs import lifecycle
from tests.helpers import (alive, fake_trainer_command, post_run, run_json, run_status, scratch_file, submit,
                           wait_for)

FOUR_DEVICES = {"XLA_FLAGS": f"{HOST_DEVICE_FLAG}=4", "TUNIX_PLACEMENT_PASSOVER_SECONDS": "0"}
FAST_LEASE = {"TUNIX_HEARTBEAT_SECONDS": "0.5", "TUNIX_LEASE_TIMEOUT_SECONDS": "3"}


def _register(worker_id: str, devices: int) -> None:
    registry.register(worker_id, "host", 1, [{"id": i, "kind": "gpu", "name": "GPU", "memory_bytes": 2**34}
                                             for i in range(devices)], {"python": "3"})


# -- what a run may ask for -------------------------------------------------------------------

@pytest.mark.parametrize("body, field, words", [
    ({"devices": 0}, "devices", "must be at least 1"),
    ({"devices": 1000}, "devices", "must be at most 4: no worker has reported more devices than that"),
    ({"devices": 4, "mesh": {"fsdp": 3, "tp": 1}}, "mesh", "lays out 3 devices, but devices is 4"),
    ({"devices": 4, "mesh": "fsdp=2, tp=3"}, "mesh", "lays out 6 devices, but devices is 4"),
    ({"mesh": {"fsdp": 1, "tp": 4}}, "mesh",
     "tp=4 must divide the model's 4 attention heads and its 2 key/value heads"),
    ({"mesh": {"fsdp": 2, "pp": 2}}, "mesh", "has no axis 'pp'"),
    ({"mesh": {"fsdp": 0}}, "mesh", "fsdp must be a whole number from 1 to 1024"),
    ({"devices": 4, "batch_size": 6}, "batch_size", "must be a multiple of the mesh's fsdp=4"),
])
def test_bad_device_requests_are_refused_naming_the_field(client, body, field, words):
    _register("big", 4)
    response = post_run(client, "async", **body)
    assert response.status_code == 422, response.get_json()
    assert words in response.get_json()["details"][field]


def test_a_mesh_alone_says_how_many_devices_and_devices_alone_lay_out_on_fsdp(client):
    _register("big", 4)
    tp = run_json(client, submit(client, mesh="fsdp=2, tp=2")["run_id"])
    assert tp["devices"] == 4 and tp["config"]["mesh"] == {"fsdp": 2, "tp": 2}
    fsdp = run_json(client, submit(client, devices=2)["run_id"])
    assert fsdp["config"]["mesh"] == {"fsdp": 2, "tp": 1} and fsdp["device_ids"] is None


def test_the_form_refuses_a_bad_mesh_next_to_its_field_and_keeps_what_was_typed(client):
    _register("big", 4)
    page = client.post("/runs/new", data={"dataset_key": "arithmetic-v1", "mode": "async", "devices": "4",
                                          "mesh": "fsdp=2, tp=3"})
    html = page.get_data(as_text=True)
    assert page.status_code == 422 and 'id="mesh-error"' in html and 'value="fsdp=2, tp=3"' in html


# -- the placement policy, one claim at a time --------------------------------------------------

def _queue(client, *sizes: int) -> list[uuid.UUID]:
    return [uuid.UUID(submit(client, devices=n, batch_size=4)["run_id"]) for n in sizes]


def test_a_claim_takes_only_a_run_that_fits_the_free_devices_and_places_it_on_them(client):
    _register("big", 4)
    big, small = _queue(client, 4, 1)
    claimed = queue_store.claim_next_run("w", free_ids=[3, 1], capacity=4, passover_seconds=3600)
    assert claimed.id == small and claimed.device_ids == (1,)  # the 4-device run does not fit 2 free
    assert run_json(client, str(small))["device_ids"] == [1]
    claimed = queue_store.claim_next_run("w", free_ids=[0, 1, 2, 3], capacity=4)
    assert claimed.id == big and claimed.device_ids == (0, 1, 2, 3) and claimed.devices == 4


def test_a_run_passed_over_too_long_holds_back_younger_runs_on_workers_it_fits(client):
    _register("big", 4)
    big, small = _queue(client, 4, 1)
    # Within the passover a younger run may go first; after it, nothing younger starts on a worker the
    # big run fits (its devices drain for it) ...
    assert queue_store.claim_next_run("w", free_ids=[0, 1], capacity=4, passover_seconds=0) is None
    # ... while a worker it can never fit is not held back.
    assert queue_store.claim_next_run("small-host", free_ids=[0], capacity=1, passover_seconds=0).id == small
    assert queue_store.claim_next_run("w", free_ids=[0, 1, 2, 3], capacity=4, passover_seconds=0).id == big


def test_a_recovered_run_gives_its_devices_back(client):
    run_id = _queue(client, 2)[0]
    claimed = queue_store.claim_next_run("w", free_ids=[0, 1, 2, 3], capacity=4)
    assert claimed.device_ids == (0, 1)
    assert lifecycle.requeue(run_id, claimed.lease, "test", recovered=True)
    assert run_json(client, str(run_id))["device_ids"] is None


# -- one worker, four devices, runs side by side ----------------------------------------------------

def _intervals(client, run_ids):
    runs = [run_json(client, r) for r in run_ids]
    return {r["run_id"]: r for r in runs}


def test_one_worker_runs_a_mixed_queue_side_by_side_without_sharing_a_device(client, worker_env, start_worker,
                                                                           tmp_path):
    records, release = tmp_path / "records", tmp_path / "release"
    records.mkdir()
    sizes = [1, 2, 1, 4, 1, 2, 1, 1]
    run_ids = [submit(client, devices=n, batch_size=4)["run_id"] for n in sizes]
    start_worker(worker_env(fake_trainer_command("--wait-for", str(release), "--record-dir", str(records)),
                            **FOUR_DEVICES))
    # The first three fill the four devices and run at once: none ends before all three are running.
    wait_for(lambda: all(run_status(client, r) == "running" for r in run_ids[:3]), timeout=60)
    assert all(run_status(client, r) == "pending" for r in run_ids[3:])
    release.touch()
    wait_for(lambda: all(run_status(client, r) == "completed" for r in run_ids), timeout=120)

    runs = _intervals(client, run_ids)
    executions = [json.loads(p.read_text()) | {"run_id": p.name.split(".")[0]} for p in records.iterdir()]
    assert sorted(e["run_id"] for e in executions) == sorted(run_ids), "each run executed exactly once"
    for e in executions:  # the trainer was handed the devices the claim placed it on, and as many host devices
        run = runs[e["run_id"]]
        assert e["device_ids"] == ",".join(map(str, run["device_ids"])) and e["host_devices"] == run["devices"]
    for a, b in combinations(runs.values(), 2):
        overlap = a["started_at"] < b["completed_at"] and b["started_at"] < a["completed_at"]
        assert not (overlap and set(a["device_ids"]) & set(b["device_ids"])), (a["run_id"], b["run_id"])
    # The bound (passover 0): once the 4-device run waited, nothing queued after it started before it.
    big = runs[run_ids[3]]
    assert all(runs[r]["started_at"] >= big["started_at"] for r in run_ids[4:])
    assert sorted(big["device_ids"]) == [0, 1, 2, 3]

    status = client.get("/api/tunix/status").get_json()
    assert status["devices"] == {"total": 4, "busy": 0, "free": 4} and status["largest_live_worker_devices"] == 4
    page = client.get("/workers").get_data(as_text=True)
    assert "4 of 4" in page


@pytest.fixture
def short_lease(app_config):
    """The web side counts a worker lost as soon as the workers do (FAST_LEASE)."""
    app_config["LEASE_TIMEOUT_SECONDS"] = float(FAST_LEASE["TUNIX_LEASE_TIMEOUT_SECONDS"])


def test_a_killed_worker_s_three_runs_are_all_recovered_and_its_devices_freed(short_lease, client, worker_env,
                                                                            start_worker, scratch_root, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    again = [submit(client, devices=n, batch_size=4, max_attempts=2)["run_id"] for n in (1, 2)]
    once = submit(client, devices=1, max_attempts=1)["run_id"]
    doomed = start_worker(worker_env(fake_trainer_command("--sleep", "120", "--record-dir", str(records)),
                                     **FOUR_DEVICES, **FAST_LEASE))
    wait_for(lambda: all(scratch_file(scratch_root, r, "pids.json") for r in [*again, once]), timeout=60)
    trainers = [json.loads(scratch_file(scratch_root, r, "pids.json").read_text())[0] for r in [*again, once]]
    held = client.get("/api/tunix/status").get_json()["workers"][0]
    assert sorted(held["busy_device_ids"]) == [0, 1, 2, 3] and len(held["running"]) == 3
    doomed.kill()  # SIGKILL: no hand-back, no last heartbeat
    doomed.wait()
    wait_for(lambda: not any(alive(pid) for pid in trainers), timeout=10)  # its trainers die with it
    killed_at = time.time()

    start_worker(worker_env(fake_trainer_command("--record-dir", str(records)), **FOUR_DEVICES, **FAST_LEASE))
    wait_for(lambda: all(run_status(client, r) == "completed" for r in again) and run_status(client, once) == "failed",
             timeout=60)
    for run_id in again:
        run = run_json(client, run_id)
        assert run["recoveries"] == 1 and run["attempt"] == 2
        starts = sorted(json.loads(p.read_text())["started"] for p in records.glob(f"{run_id}.*"))
        assert len(starts) == 2 and starts[1] > killed_at, "the second execution began after the first was gone"
    assert run_json(client, once)["error_message"].startswith("worker lost")

    def dead_worker():
        return next(w for w in client.get("/api/tunix/status").get_json()["workers"] if w["pid"] == doomed.pid)

    dead = wait_for(lambda: (lambda w: w if not w["alive"] else None)(dead_worker()), timeout=30)
    assert dead["running"] == {} and dead["busy_device_ids"] == [] and dead["free_device_ids"] == []
    fleet = client.get("/api/tunix/status").get_json()
    # Only the live worker's devices count: all free once its runs ended.
    assert fleet["devices"] == {"total": 4, "busy": 0, "free": 4} and fleet["largest_live_worker_devices"] == 4


def test_a_run_no_live_worker_is_large_enough_for_says_why_it_waits(client):
    _register("gone", 4)
    registry.heartbeat("gone", registry.STOPPED, None, 0)  # once seen with 4: a 4-device run may be queued
    _register("small", 2)
    run_id = submit(client, devices=4, batch_size=4)["run_id"]
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "It needs 4 devices and the largest live worker has 2" in page
    fits = submit(client, devices=2, batch_size=4)["run_id"]
    assert "largest live worker" not in client.get(f"/runs/{fits}").get_data(as_text=True)


def test_cancel_and_shutdown_hold_per_run_on_a_worker_running_two(client, worker_env, start_worker, scratch_root,
                                                                 tmp_path):
    never = tmp_path / "never"  # the trainers wait for it: only a stop ends them
    first, second = (submit(client, devices=n, batch_size=4)["run_id"] for n in (1, 2))
    worker = start_worker(worker_env(fake_trainer_command("--wait-for", str(never)), **FOUR_DEVICES,
                                     TUNIX_WORKER_SHUTDOWN_GRACE_SECONDS="1"))
    wait_for(lambda: all(scratch_file(scratch_root, r, "pids.json") for r in (first, second)), timeout=60)
    trainers = {r: json.loads(scratch_file(scratch_root, r, "pids.json").read_text())[0] for r in (first, second)}

    assert client.post(f"/api/tunix/runs/{first}/cancel").status_code == 202
    wait_for(lambda: run_status(client, first) == "cancelled", timeout=30)
    assert not alive(trainers[first]) and alive(trainers[second]) and run_status(client, second) == "running"
    held = client.get("/api/tunix/status").get_json()["workers"][0]
    assert held["busy_device_ids"] == run_json(client, second)["device_ids"] and len(held["free_device_ids"]) == 2

    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    run = run_json(client, second)
    assert run["status"] == "pending" and run["attempt"] == 0 and "on shutdown" in run["error_message"]
    assert run["device_ids"] is None and not alive(trainers[second])
