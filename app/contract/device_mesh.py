"""How many devices a run asks for, the mesh it lays them out in, and how a trainer is handed its devices.

Shared by the web tier (validation, the form), the worker (placement) and the trainer (the mesh it
builds); no JAX here. A mesh has Tunix's two axes: `fsdp` (parameters and the batch split across
devices) and `tp` (heads and hidden units split across devices); their product is the run's devices.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

AXES = ("fsdp", "tp")
MAX_DEVICES = 1024

# How a trainer is kept to its devices, per platform: the variable names the ids it may see.
VISIBLE_DEVICES_ENV = {"gpu": "CUDA_VISIBLE_DEVICES", "tpu": "TPU_VISIBLE_CHIPS"}
# The ids a worker placed the trainer on (as the worker numbers them), for its log and its result.
DEVICE_IDS_ENV = "TUNIX_DEVICE_IDS"
HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_HOST_DEVICE_FLAG = re.compile(re.escape(HOST_DEVICE_FLAG) + r"=(\d+)")
_MESH_TEXT = re.compile(r"^\s*(\w+)\s*[=:]\s*(\S+?)\s*$")


def default_mesh(devices: int) -> dict[str, int]:
    """All devices on the fsdp axis: the layout that needs nothing of the model's heads."""
    return {"fsdp": devices, "tp": 1}


def parse_mesh(value: Any) -> dict[str, int] | None:
    """A mesh from the API ({"fsdp": 2, "tp": 2}) or the form ("fsdp=2, tp=2"); None when blank.

    ValueError says what is wrong. An axis left out is 1.
    """
    if value is None or (isinstance(value, str) and not value.strip()) or value == {}:
        return None
    if isinstance(value, str):
        pairs = {}
        for part in value.split(","):
            match = _MESH_TEXT.match(part)
            if not match:
                raise ValueError(f"must look like fsdp=2, tp=2; got {part.strip()[:40]!r}")
            pairs[match[1]] = match[2]
        value = pairs
    if not isinstance(value, Mapping):
        raise ValueError('must be an object such as {"fsdp": 2, "tp": 2}')
    unknown = sorted(set(value) - set(AXES))
    if unknown:
        raise ValueError(f"has no axis {unknown[0][:40]!r}: its axes are {' and '.join(AXES)}")
    mesh = {}
    for axis in AXES:
        size = value.get(axis, 1)
        if isinstance(size, str) and size.strip().isdigit():
            size = int(size.strip())
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_DEVICES:
            raise ValueError(f"{axis} must be a whole number from 1 to {MAX_DEVICES}")
        mesh[axis] = size
    return mesh


def mesh_size(mesh: Mapping[str, int]) -> int:
    size = 1
    for axis in AXES:
        size *= int(mesh.get(axis, 1))
    return size


def describe(mesh: Mapping[str, int]) -> str:
    """As the form and the run page write it: "fsdp=2, tp=2"."""
    return ", ".join(f"{axis}={int(mesh.get(axis, 1))}" for axis in AXES)


def run_mesh(config: Mapping[str, Any]) -> dict[str, int]:
    """The mesh a run's config asks for (a run stored before meshes existed: one device)."""
    return dict(config.get("mesh") or default_mesh(int(config.get("devices") or 1)))


def host_device_count(xla_flags: str | None) -> int | None:
    """The CPU devices XLA_FLAGS asks JAX to make of this host, when it asks."""
    found = _HOST_DEVICE_FLAG.findall(xla_flags or "")
    return int(found[-1]) if found else None


@dataclass(frozen=True)
class Placement:
    """The devices one trainer may use: their platform (None: whatever the host has) and the worker's ids."""

    platform: str | None
    device_ids: tuple[int, ...]

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """`env` with the variables that keep the trainer to these devices.

        On an accelerator the visible-devices variable names them; on the CPU, XLA makes as many host
        devices as the run has. JAX then numbers the trainer's devices from 0.
        """
        out = dict(env)
        ids = ",".join(str(i) for i in self.device_ids)
        variable = VISIBLE_DEVICES_ENV.get(self.platform or "")
        if variable:
            out[variable] = ids
        flags = _HOST_DEVICE_FLAG.sub("", out.get("XLA_FLAGS", "")).split()
        out["XLA_FLAGS"] = " ".join([*flags, f"{HOST_DEVICE_FLAG}={max(1, len(self.device_ids))}"])
        out[DEVICE_IDS_ENV] = ids
        return out


def first_devices(count: int) -> Placement:
    """A sync run's trainer on the web host: the first `count` devices of whatever it has."""
    return Placement(None, tuple(range(count)))

