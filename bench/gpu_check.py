"""The accelerator check: the `small` preset and the test checkpoint trained on 1 device and on all of them.

For a host with GPUs or TPUs (`make gpu-check`). It asks the device probe what the host has, then runs
the real trainer (`python -m app.trainer`) on each model twice: on device 0 alone, and on a mesh over
every device (fsdp, the batch split evenly), each kept to its devices the way a worker keeps it. It
prints steps/s, tokens/s, the scaling ratio (all devices against one, at the same batch per device) and
each device's memory peak. No database is needed.

On a host without accelerators it says so and runs the same path on `--cpu-devices` JAX CPU devices, so
the script itself is exercised; those figures are not accelerator figures.

    .venv/bin/python bench/gpu_check.py [--steps 60] [--batch-per-device 8] [--cpu-devices 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import write_results  # noqa: E402
from tests.checkpoints import write_tiny_checkpoint  # noqa: E402

GiB = 2**30


def _probe(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "app.trainer.device_probe"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def _train(model_id: str, devices: int, platform: str, args, env: dict, folder: Path) -> dict:
    from app.contract.device_mesh import Placement
    from app.contract.run_files import SUMMARY_FILE
    from app.datasets.sample import sample_examples
    from app.execution.run_directory import write_run_directory
    from app.runs.validation import validate_run_config

    config = validate_run_config({
        "dataset_key": "arithmetic-v1", "model_id": model_id, "devices": devices, "seed": 0,
        "batch_size": args.batch_per_device * devices, "max_steps": args.steps, "max_seq_length": 64,
        "eval_max_examples": 0, "eval_every_n_steps": args.steps, "checkpoint_every_n_steps": args.steps},
        model_roots=[folder.parent])
    run_id = uuid.uuid4()
    run_dir = write_run_directory(folder / str(run_id), run_id, config, sample_examples())
    placement = Placement(platform, tuple(range(devices)))
    done = subprocess.run([sys.executable, "-m", "app.trainer", str(run_dir)], cwd=run_dir,
                          env={**placement.environment(env), "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{model_id} on {devices} devices failed:\n{done.stderr[-3000:]}")
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    layout = summary["layout"]
    return {"steps_per_second": summary["steps_per_second"], "tokens_per_second": summary["tokens_per_second"],
            "mesh": layout["mesh"], "device_kinds": layout["device_kinds"],
            "memory_peak_bytes": layout["memory_peak_bytes"], "host_peak_rss_bytes": layout["host_peak_rss_bytes"]}


def _peaks(figures: dict) -> str:
    peaks = [p for p in figures["memory_peak_bytes"] if p]
    if peaks:
        return "memory peak per device " + ", ".join(f"{p / GiB:.2f} GiB" for p in peaks)
    return f"host memory peak {figures['host_peak_rss_bytes'] / GiB:.2f} GiB (the runtime reports none per device)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-per-device", type=int, default=8)
    parser.add_argument("--cpu-devices", type=int, default=2)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    found = _probe(env)
    platform = found["platform"]
    if platform == "cpu":
        print(f"no accelerator on this host: unverified. The same path on {args.cpu_devices} JAX CPU devices "
              "follows, to exercise it; these are not accelerator figures.")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpu_devices}"
        found = _probe(env)
    count = len(found["devices"])
    kinds = sorted({d["name"] for d in found["devices"]})
    versions = ", ".join(f"{k} {v}" for k, v in found["versions"].items())
    print(f"{count} {platform} devices ({', '.join(kinds)}); {versions}")

    results = {"platform": platform, "devices": count, "device_kinds": kinds, "versions": found["versions"],
               "steps": args.steps, "batch_per_device": args.batch_per_device, "models": {}}
    with tempfile.TemporaryDirectory(prefix="tunix-gpu-check-") as tmp:
        checkpoint = str(write_tiny_checkpoint(Path(tmp) / "checkpoint", "llama"))
        for name, model_id in (("small preset", "small"), ("test checkpoint (llama)", checkpoint)):
            one = _train(model_id, 1, platform, args, env, Path(tmp) / "runs")
            every = _train(model_id, count, platform, args, env, Path(tmp) / "runs")
            scaling = round(every["tokens_per_second"] / one["tokens_per_second"], 2) if one["tokens_per_second"] else None
            results["models"][name] = {"one_device": one, "all_devices": every, "scaling": scaling}
            print(f"{name}:")
            for label, figures in (("1 device", one), (f"{count} devices", every)):
                print(f"  {label}: {figures['steps_per_second']} steps/s, {figures['tokens_per_second']} tokens/s, "
                      f"mesh {figures['mesh']}; {_peaks(figures)}")
            print(f"  scaling (tokens/s, {count} devices against 1): {scaling}x")
    write_results("gpu_check", results)


if __name__ == "__main__":
    main()
