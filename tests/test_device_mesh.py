"""Runs on several devices: a mesh of JAX host devices on this CPU, built and sharded by the real trainer."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.contract.device_mesh import HOST_DEVICE_FLAG
from tests.helpers import ROOT, SAMPLE, run_status, wait_for
from tests.test_trainer import REAL_TRAINER, metrics_of

pytestmark = pytest.mark.trainer

FOUR_HOST_DEVICES = f"{HOST_DEVICE_FLAG}=4"
# Sharding changes only the order of float32 sums: the losses of one seed agree far inside this.
LOSS_TOLERANCE = 1e-4
STEPS = 10


def test_the_device_probe_reports_the_host_devices_and_the_stack_s_versions():
    out = subprocess.run([sys.executable, "-m", "app.trainer.device_probe"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "XLA_FLAGS": FOUR_HOST_DEVICES}).stdout
    found = json.loads(out)
    assert found["platform"] == "cpu" and [d["id"] for d in found["devices"]] == [0, 1, 2, 3]
    assert set(found["versions"]) == {"python", "jax", "jaxlib", "tunix", "flax"}
    assert all(found["versions"].values())


def test_fsdp_and_fsdp_by_tp_runs_train_through_a_worker_like_one_device(client, worker_env, start_worker):
    common = {"dataset_key": SAMPLE, "max_steps": STEPS, "batch_size": 4, "seed": 7, "learning_rate": 0.003,
              "eval_every_n_steps": STEPS, "checkpoint_every_n_steps": STEPS, "eval_max_examples": 0}
    runs = {
        "one": client.post("/api/tunix/run?mode=async", json=common).get_json()["run_id"],
        "fsdp": client.post("/api/tunix/run?mode=async", json={**common, "devices": 2}).get_json()["run_id"],
        # The 2x2 run also scores answers: generation runs on the mesh too.
        "2x2": client.post("/api/tunix/run?mode=async", json={**common, "mesh": {"fsdp": 2, "tp": 2},
                                                              "eval_max_examples": 4,
                                                              "eval_max_new_tokens": 8}).get_json()["run_id"],
    }
    start_worker(worker_env(REAL_TRAINER, XLA_FLAGS=FOUR_HOST_DEVICES))
    wait_for(lambda: all(run_status(client, r) in ("completed", "failed", "timeout") for r in runs.values()),
             timeout=420)
    detail = {name: client.get(f"/api/tunix/runs/{r}").get_json() for name, r in runs.items()}
    for name, run in detail.items():
        assert run["status"] == "completed", (name, run["error_message"], run["stderr_tail"])

    losses = {name: [p["loss"] for p in metrics_of(client, r)["train"]] for name, r in runs.items()}
    assert len(losses["one"]) == STEPS
    for name in ("fsdp", "2x2"):
        assert losses[name] == pytest.approx(losses["one"], rel=LOSS_TOLERANCE), name

    layout = {name: run["result"]["layout"] for name, run in detail.items()}
    assert layout["one"]["mesh"] == {"fsdp": 1, "tp": 1}
    assert layout["fsdp"]["mesh"] == {"fsdp": 2, "tp": 1} and len(layout["fsdp"]["device_ids"]) == 2
    assert layout["2x2"]["mesh"] == {"fsdp": 2, "tp": 2} and sorted(layout["2x2"]["device_ids"]) == [0, 1, 2, 3]
    assert detail["2x2"]["device_ids"] == layout["2x2"]["device_ids"]
    # Tunix's rules name the axes each parameter is split over: the proof it is sharded, not replicated.
    specs = layout["2x2"]["parameter_shardings"]
    named = {axis for spec in specs.values() for axis in (spec or []) if isinstance(axis, str)}
    assert named == {"fsdp", "tp"}, specs
    assert layout["2x2"]["host_peak_rss_bytes"] > 0 and layout["2x2"]["device_kinds"] == ["cpu"]
    assert detail["2x2"]["result"]["evaluation"]["after"]["examples"] == 4

    page = client.get(f"/runs/{runs['2x2']}").get_data(as_text=True)
    assert "fsdp=2, tp=2" in page and "tp" in page
