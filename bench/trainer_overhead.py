"""Platform overhead on real training: the tiny preset launched through Tunix RT versus by hand.

Through Tunix RT: POST /api/tunix/run?mode=async, a live worker.py claims it and runs the
trainer; time to first step is from the POST to step 1 being visible in the metrics API,
wall time from the POST to the run reading completed. By hand: `python -m app.trainer RUN_DIR`
on an identical run directory; time to first step is from launch to the step-1 line.
Steps/s and tokens/s are the trainer's own steady-state figures (first step excluded).

    .venv/bin/python bench/trainer_overhead.py [--steps 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_db import scratch_database  # noqa: E402
from bench.output import write_results  # noqa: E402

TRAINER = [sys.executable, "-m", "app.trainer"]


def run_direct(config: dict, artifacts: Path, index: int, settings) -> dict:
    """The same trainer on an identical run directory, launched as a person would, in the same environment."""
    from app.datasets import store as dataset_store
    from app.execution.run_directory import write_run_directory
    from app.execution.tunix_execution import child_environment

    run_dir = write_run_directory(artifacts / f"direct-{index}", f"direct-{index}", config,
                                  list(dataset_store.iter_examples(config["dataset_key"])))
    start = time.monotonic()
    proc = subprocess.Popen([*TRAINER, str(run_dir)], cwd=run_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=child_environment(settings), text=True)
    first_step, summary = None, None
    for line in proc.stdout:
        if line.startswith('{"event":"step"') and first_step is None:
            first_step = time.monotonic() - start
        elif line.startswith('{"event":"end"'):
            summary = json.loads(line)
    proc.wait()
    if proc.returncode != 0 or summary is None:
        raise SystemExit(f"direct trainer failed with exit code {proc.returncode}")
    return {"ttfs": first_step, "wall": time.monotonic() - start, "steps_per_s": summary["steps_per_second"],
            "tokens_per_s": summary["tokens_per_second"]}


def run_through_platform(client, body: dict) -> dict:
    start = time.monotonic()
    run_id = client.post("/api/tunix/run?mode=async", json=body).get_json()["run_id"]
    first_step = None
    while True:
        if first_step is None and client.get(f"/api/tunix/runs/{run_id}/metrics").get_json()["train"]:
            first_step = time.monotonic() - start
        status = client.get(f"/api/tunix/runs/{run_id}/status").get_json()["status"]
        if status not in ("pending", "running"):
            break
        time.sleep(0.02)
    wall = time.monotonic() - start
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    if run["status"] != "completed":
        raise SystemExit(f"run {run_id} ended {run['status']}: {run['error_message']}")
    result = run["result"]
    return {"ttfs": first_step, "wall": wall, "steps_per_s": result["steps_per_second"],
            "tokens_per_s": result["tokens_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    body = {"dataset_key": None, "model_id": "tiny", "max_steps": args.steps, "num_epochs": 100,
            "eval_fraction": 0, "checkpoint_every_n_steps": 1_000_000}

    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        artifacts = Path(tmp)
        os.environ.update(DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(artifacts), TUNIX_INSTANCE_DIR=tmp)
        from app import create_app
        from app.accounts import service as accounts
        from app.datasets.sample import SAMPLE_KEY
        from app.execution.tunix_execution import ExecutionSettings
        from app.runs.validation import validate_run_config

        app = create_app({"DATABASE_URL": url, "ARTIFACTS_ROOT": str(artifacts), "TRAIN_COMMAND": TRAINER})
        worker_env = dict(os.environ, TUNIX_TRAIN_COMMAND=shlex.join(TRAINER), TUNIX_WORKER_POLL_SECONDS="0.05")
        worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=worker_env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with app.app_context():
                body["dataset_key"] = SAMPLE_KEY
                config = validate_run_config(body)
                client = app.test_client()
                # The API wants a token, made the way a person makes one.
                user, _ = accounts.create_user("bench", admin=True)
                client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {accounts.create_token(user, 'bench')[1]}"
                direct, platform = [], []
                for i in range(args.repeats):  # interleaved, so drift hits both alike
                    direct.append(run_direct(config, artifacts, i, ExecutionSettings.from_config(app.config)))
                    platform.append(run_through_platform(client, body))
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)

    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"tiny preset, {args.steps} steps, batch 4, seq 128, median of {args.repeats} (CPU: {os.cpu_count()} cores)")
    print(f"{'':28}{'by hand':>12}{'Tunix RT':>12}{'RT / hand':>12}")
    rows = []
    for key, label, unit in [("ttfs", "time to first step", "s"), ("steps_per_s", "steady steps/s", ""),
                             ("tokens_per_s", "steady tokens/s", ""), ("wall", "launch to finished", "s")]:
        d, p = median(direct, key), median(platform, key)
        rows.append({"what": label, "by_hand": d, "tunix_rt": p, "ratio": p / d})
        print(f"{label + (' (' + unit + ')' if unit else ''):28}{d:12.2f}{p:12.2f}{p / d:12.3f}")
    write_results("trainer_overhead", {"steps": args.steps, "repeats": args.repeats, "cpus": os.cpu_count(),
                                       "rows": rows})


if __name__ == "__main__":
    main()
