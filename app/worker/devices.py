"""What a worker can train on, as it tells the registry: its GPUs (from nvidia-smi) or else this host's memory.

Read without JAX (the worker never imports it): the trainer a worker starts is the one that uses them.
A dry run's plan sets the memory a step needs beside what the workers report.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NVIDIA_SMI_TIMEOUT_SECONDS = 10


def _gpus() -> list[dict]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    devices = []
    for line in out.strip().splitlines():
        name, _, mebibytes = line.rpartition(",")
        try:
            devices.append({"kind": "gpu", "name": name.strip(), "memory_bytes": int(float(mebibytes)) * 2**20})
        except ValueError:
            continue
    return devices


def _host_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def local_devices() -> list[dict]:
    """This host's accelerators, or the CPU with the host's memory when it has none."""
    gpus = _gpus()
    if gpus:
        return gpus
    memory = _host_memory_bytes()
    return [{"kind": "cpu", "name": "CPU", "memory_bytes": memory}] if memory else []
