"""What a worker tells the registry it trains on, and how the workers page and the API show it."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from app.worker import devices
from tests.helpers import ROOT, wait_for


def test_a_host_without_gpus_or_probe_reports_its_cpu_devices_with_the_host_s_memory(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    found = devices.detect(None)
    meminfo = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:")).split()[1]) * 1024
    assert (found.platform, found.source) == ("cpu", "host")
    assert list(found.devices) == [{"id": i, "kind": "cpu", "name": "CPU", "memory_bytes": meminfo} for i in range(3)]
    monkeypatch.delenv("XLA_FLAGS")
    assert devices.detect(None).ids == [0]


def test_gpus_come_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    # What nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits prints on a two-GPU host.
    smi.write_text("#!/bin/sh\nprintf '0, NVIDIA H200, 143771\\n1, NVIDIA H200, 143771\\n'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    found = devices.detect(["/nonexistent/python", "-m", "app.trainer.device_probe"])  # the probe fails: nvidia-smi
    assert (found.platform, found.source) == ("gpu", "nvidia-smi")
    assert list(found.devices) == [{"id": i, "kind": "gpu", "name": "NVIDIA H200", "memory_bytes": 143771 * 2**20}
                                   for i in (0, 1)]


def test_a_failing_nvidia_smi_falls_back_to_the_cpu(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert [d["kind"] for d in devices.detect(None).devices] == ["cpu"]


def test_a_worker_registers_its_devices_and_the_api_and_page_show_them(client, worker_env, start_worker):
    start_worker(worker_env())
    workers = wait_for(lambda: client.get("/api/workers").get_json()["workers"], timeout=60)
    reported = workers[0]["devices"]
    assert reported and reported[0]["memory_bytes"] > 2**20
    page = client.get("/workers").get_data(as_text=True)
    assert f"{reported[0]['name']} (" in page


def test_devices_restrict_a_worker_to_ids_its_host_has(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    found = devices.detect(None)
    assert found.restricted(devices.parse_device_ids("2, 0")).ids == [0, 2]
    assert found.restricted(None).ids == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="names 7, but this host has cpu devices 0, 1, 2, 3"):
        found.restricted([0, 7])
    for bad, words in (("0,x", "such as 0,1,2,3"), ("1,1", "names a device twice")):
        with pytest.raises(ValueError, match=words):
            devices.parse_device_ids(bad)


def test_a_worker_asked_for_a_device_its_host_lacks_exits_saying_so(worker_env):
    env = worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "worker.py", "--devices", "0,5"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "--devices names 5, but this host has cpu devices 0, 1" in done.stderr


def test_a_worker_reports_its_probed_devices_and_versions_on_the_page_the_api_and_metrics(client, worker_env,
                                                                                      start_worker):
    # The real probe, in the trainer's interpreter: 4 JAX CPU devices, of which the worker takes 3.
    env = worker_env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                     TUNIX_DEVICE_PROBE_COMMAND=f"{sys.executable} -m app.trainer.device_probe")
    start_worker(env, "--devices", "1,2,3")
    worker = wait_for(lambda: client.get("/api/tunix/status").get_json()["workers"], timeout=60)[0]
    assert [d["id"] for d in worker["devices"]] == [1, 2, 3] and worker["versions"]["tunix"] == "0.1.7"
    assert worker["free_device_ids"] == [1, 2, 3] and worker["busy_device_ids"] == []
    page = client.get("/workers").get_data(as_text=True)
    assert "3 of 3" in page and "tunix 0.1.7" in page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tunix_devices{kind="cpu",state="free"} 3.0' in metrics
