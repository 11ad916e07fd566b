"""Wake-up latency: from the enqueue's commit to a worker's claim, with an idle worker.

One run at a time is queued while the worker is idle; the latency is the run's
started_at minus its queued_at, both stamped by the database clock. Compared: a worker
woken by LISTEN/NOTIFY, and one that only polls every 4 s (TUNIX_WORKER_LISTEN=0).

    .venv/bin/python bench/wakeup_latency.py [--runs 200] [--poll-runs 50]
"""
from __future__ import annotations

import argparse
import os
import random
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(app, url: str, tmp: str, runs: int, listen: bool) -> list[float]:
    from sqlalchemy import text

    from app.runs import service as run_service
    from app.extensions import db

    env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(Path(tmp) / "artifacts"),
               TUNIX_TRAIN_COMMAND="true", TUNIX_WORKER_LISTEN="1" if listen else "0",
               TUNIX_WORKER_POLL_SECONDS="300" if listen else "4")
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latencies = []
    try:
        time.sleep(3)  # let it start and go idle
        rng = random.Random(1)
        with app.app_context():
            for _ in range(runs):
                run, _ = run_service.submit_run({"dataset_key": "one-v1", "batch_size": 1}, "async")
                while True:
                    row = db.session.execute(text(
                        "SELECT status, extract(epoch FROM started_at - queued_at) FROM tunix_runs WHERE id = :id"),
                        {"id": run.id}).one()
                    db.session.rollback()
                    if row[0] == "completed":
                        break
                    time.sleep(0.005)
                latencies.append(float(row[1]) * 1000)
                # Idle again, then enqueue at a random point of the poll cycle.
                time.sleep(rng.uniform(0.05, 0.3) if listen else rng.uniform(0.05, 4.0))
            db.session.remove()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs measured with LISTEN/NOTIFY")
    parser.add_argument("--poll-runs", type=int, default=40, help="runs measured with 4 s polling (~4 s each)")
    args = parser.parse_args()
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        os.environ.update(TUNIX_INSTANCE_DIR=tmp)
        from app import create_app
        from app.datasets import store as dataset_store
        from app.datasets.parsing import Example

        app = create_app({"DATABASE_URL": url})
        with app.app_context():
            dataset_store.create_dataset("one", [Example("ping", "pong")])
        listen = measure(app, url, tmp, args.runs, listen=True)
        poll = measure(app, url, tmp, args.poll_runs, listen=False)
    print(f"enqueue commit -> claim, idle worker ({os.cpu_count()} CPU cores, database clock)")
    print(f"{'':30}{'runs':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for label, values in (("LISTEN/NOTIFY", listen), ("polling every 4 s", poll)):
        print(f"{label:30}{len(values):6d}{statistics.median(values):10.1f}{percentile(values, 0.99):10.1f}"
              f"{max(values):10.1f}")


if __name__ == "__main__":
    main()
