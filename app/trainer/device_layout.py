"""The mesh a run trains on: built from its devices and shape, the model sharded by Tunix's own rules.

Tunix's models name each parameter's axes (`fsdp`, `tp`) in their ShardingConfig; inside the mesh's
context PeftTrainer shards every batch over `fsdp` and the optimizer state like the parameters.
"""
from __future__ import annotations

import os
import resource
from typing import Any

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh

from app.contract import device_mesh

SHOWN_PARAMETERS = 6  # the run's result names this many parameters' shardings


def build_mesh(config: dict[str, Any]) -> Mesh:
    """The run's mesh over the first `devices` devices this process sees (its worker chose which)."""
    shape = device_mesh.run_mesh(config)
    wanted = device_mesh.mesh_size(shape)
    found = jax.devices()
    if len(found) < wanted:
        raise RuntimeError(f"the run asks for {wanted} devices but the trainer sees {len(found)} "
                           f"({found[0].platform}); lower devices or run it on a larger worker")
    # Auto axes: Tunix's models place their shardings with with_sharding_constraint, which needs them.
    return jax.make_mesh(tuple(shape[a] for a in device_mesh.AXES), device_mesh.AXES, devices=found[:wanted],
                         axis_types=(AxisType.Auto,) * len(device_mesh.AXES))


def shard_model(model, mesh: Mesh) -> None:
    """Lay the model's parameters (and LoRA adapters) out on the mesh as their annotations say."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, nnx.get_named_sharding(state, mesh)))


def _spec(value) -> list | None:
    spec = getattr(getattr(value, "sharding", None), "spec", None)
    return None if spec is None else [None if axis is None else axis if isinstance(axis, str) else list(axis)
                                      for axis in spec]


def parameter_shardings(model) -> dict[str, list | None]:
    """A few parameters with the mesh axes each of their dimensions is split over: the proof it is sharded."""
    shown = {}
    for path, variable in nnx.state(model, nnx.Param).flat_state():
        value = variable.value if hasattr(variable, "value") else variable
        if getattr(value, "ndim", 0) >= 2:
            shown[".".join(str(p) for p in path)] = _spec(value)
        if len(shown) >= SHOWN_PARAMETERS:
            break
    return shown


def memory_peaks(mesh: Mesh) -> list[int | None]:
    """Each mesh device's peak memory in bytes, where its runtime reports one (GPUs and TPUs do; the CPU not)."""
    peaks = []
    for device in mesh.devices.flat:
        try:
            stats = device.memory_stats() or {}
        except (RuntimeError, NotImplementedError):
            stats = {}
        peaks.append(stats.get("peak_bytes_in_use"))
    return peaks


def layout_report(model, mesh: Mesh) -> dict[str, Any]:
    """What the run page shows of where it trained: mesh, devices, memory peaks, some shardings."""
    devices = list(mesh.devices.flat)
    return {
        "mesh": dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape))),
        "platform": devices[0].platform,
        "device_kinds": sorted({d.device_kind for d in devices}),
        "device_ids": [int(i) for i in os.environ.get(device_mesh.DEVICE_IDS_ENV, "").split(",") if i.strip()]
        or [d.id for d in devices],
        "memory_peak_bytes": memory_peaks(mesh),
        # ru_maxrss is in KiB on Linux: the whole process, host memory (all a CPU run uses).
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "parameter_shardings": parameter_shardings(model),
    }
