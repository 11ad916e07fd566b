"""What a worker tells the registry it trains on, and how the workers page and the API show it."""
from __future__ import annotations

import os
import stat

from app.worker import devices
from tests.helpers import wait_for


def test_a_host_without_gpus_reports_its_cpu_with_the_host_s_memory(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    found = devices.local_devices()
    meminfo = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:")).split()[1]) * 1024
    assert found == [{"kind": "cpu", "name": "CPU", "memory_bytes": meminfo}]


def test_gpus_come_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    # What nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits prints on a two-GPU host.
    smi.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 143771\\nNVIDIA H200, 143771\\n'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert devices.local_devices() == [{"kind": "gpu", "name": "NVIDIA H200", "memory_bytes": 143771 * 2**20}] * 2


def test_a_failing_nvidia_smi_falls_back_to_the_cpu(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert [d["kind"] for d in devices.local_devices()] == ["cpu"]


def test_a_worker_registers_its_devices_and_the_api_and_page_show_them(client, worker_env, start_worker):
    start_worker(worker_env())
    workers = wait_for(lambda: client.get("/api/workers").get_json()["workers"], timeout=60)
    reported = workers[0]["devices"]
    assert reported and reported[0]["memory_bytes"] > 2**20
    page = client.get("/workers").get_data(as_text=True)
    assert f"{reported[0]['name']} (" in page
