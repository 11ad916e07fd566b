"""`python -m app.trainer.device_probe`: the devices and versions this interpreter's JAX finds, as one JSON line.

A worker runs it once at start in the trainer's interpreter, so that the worker itself never imports JAX.
"""
from __future__ import annotations

import json
import sys

from app.contract.versions import stack_versions


def _memory(device) -> int | None:
    try:
        stats = device.memory_stats() or {}
    except (RuntimeError, NotImplementedError):
        return None
    return stats.get("bytes_limit")


def main() -> int:
    import jax

    devices = jax.local_devices()
    print(json.dumps({
        "platform": devices[0].platform,
        "devices": [{"id": i, "kind": d.platform, "name": d.device_kind, "memory_bytes": _memory(d)}
                    for i, d in enumerate(devices)],
        "versions": stack_versions(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
