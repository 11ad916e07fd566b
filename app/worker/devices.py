"""What a worker can place runs on: its devices, each with an id, and the versions its trainer runs.

Found once at start by the device probe in the trainer's interpreter (`app.trainer.device_probe`): the
worker never imports JAX. When the probe cannot run (no command set, no JAX there), nvidia-smi's GPUs,
or else the CPU: as many host devices as XLA_FLAGS asks JAX to make, sharing the host's memory.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from app.contract import device_mesh
from app.contract.versions import stack_versions

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT_SECONDS = 10
PROBE_TIMEOUT_SECONDS = 120  # the first JAX import on a GPU host loads CUDA's libraries


@dataclass(frozen=True)
class Inventory:
    """A worker's devices (dicts with id, kind, name, memory_bytes), their platform, and its stack's versions."""

    platform: str
    devices: tuple[dict, ...]
    versions: dict = field(default_factory=dict)
    source: str = "host"  # how they were found: "jax", "nvidia-smi" or "host"

    @property
    def ids(self) -> list[int]:
        return [int(d["id"]) for d in self.devices]

    def restricted(self, wanted: Sequence[int] | None) -> "Inventory":
        """Only the devices `wanted` names (`--devices 0,1`); ValueError for an id this host does not have."""
        if not wanted:
            return self
        unknown = sorted(set(wanted) - set(self.ids))
        if unknown:
            raise ValueError(f"--devices names {', '.join(map(str, unknown))}, but this host has "
                             f"{self.platform} devices {', '.join(map(str, self.ids)) or 'none'}")
        return replace(self, devices=tuple(d for d in self.devices if int(d["id"]) in set(wanted)))


def parse_device_ids(text: str | None) -> list[int] | None:
    """`0,1,2,3` as ids; None for blank (every device). ValueError names what is wrong."""
    if text is None or not text.strip():
        return None
    ids = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"--devices takes device ids separated by commas, such as 0,1,2,3; got {part[:20]!r}")
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        raise ValueError("--devices names a device twice")
    return sorted(ids)


def _probe(command: Sequence[str]) -> Inventory | None:
    try:
        out = subprocess.run(list(command), capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS,
                             stdin=subprocess.DEVNULL, check=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        devices = tuple(found["devices"])
        if not devices:
            return None
        return Inventory(str(found["platform"]), devices, dict(found.get("versions") or {}), "jax")
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError, TypeError) as exc:
        log.warning("the device probe (%s) failed (%s); falling back to nvidia-smi or the host",
                    " ".join(command), type(exc).__name__)
        return None


def _gpus() -> list[dict]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    devices = []
    for line in out.strip().splitlines():
        index, _, rest = line.partition(",")
        name, _, mebibytes = rest.rpartition(",")
        try:
            devices.append({"id": int(index), "kind": "gpu", "name": name.strip(),
                            "memory_bytes": int(float(mebibytes)) * 2**20})
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


def _without_probe() -> Inventory:
    gpus = _gpus()
    if gpus:
        return Inventory("gpu", tuple(gpus), stack_versions(), "nvidia-smi")
    count = device_mesh.host_device_count(os.environ.get("XLA_FLAGS")) or 1
    memory = _host_memory_bytes()
    return Inventory("cpu", tuple({"id": i, "kind": "cpu", "name": "CPU", "memory_bytes": memory}
                                  for i in range(count)), stack_versions(), "host")


def detect(probe_command: Sequence[str] | None) -> Inventory:
    """This host's devices: the probe's answer when it runs, else what nvidia-smi or the host says."""
    found = _probe(probe_command) if probe_command else None
    if found is not None and found.platform == "cpu":
        # JAX reports no memory for CPU devices: each has the host's, shared.
        memory = _host_memory_bytes()
        found = replace(found, devices=tuple({**d, "memory_bytes": d.get("memory_bytes") or memory}
                                             for d in found.devices))
    return found or _without_probe()
