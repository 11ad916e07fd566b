"""Exactly once: N worker processes drain M queued runs; executions are counted from the trainer side.

Every run's trainer (bench/record_execution.sh) leaves one file per execution, so a run
executed twice shows up as two files whatever the database says.

    .venv/bin/python bench/exactly_once.py [--workers 8] [--runs 5000]
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_db import scratch_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()

    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        record_dir, artifacts = Path(tmp) / "executions", Path(tmp) / "artifacts"
        record_dir.mkdir()
        os.environ.update(TUNIX_INSTANCE_DIR=tmp)
        from sqlalchemy import text

        from app import create_app
        from app.datasets import store as dataset_store
        from app.datasets.parsing import Example
        from app.runs import service as run_service
        from app.extensions import db

        app = create_app({"DATABASE_URL": url})
        with app.app_context():
            dataset_store.create_dataset("one", [Example("ping", "pong")])
            started = time.monotonic()
            run_ids = {str(run_service.submit_run({"dataset_key": "one-v1", "batch_size": 1}, "async")[0].id)
                       for _ in range(args.runs)}
            enqueue_seconds = time.monotonic() - started
            db.session.remove()

        env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(artifacts),
                   TUNIX_TRAIN_COMMAND=shlex.join([str(ROOT / "bench" / "record_execution.sh")]),
                   TUNIX_BENCH_RECORD_DIR=str(record_dir), TUNIX_WORKER_POLL_SECONDS="0.5")
        started = time.monotonic()
        workers = [subprocess.Popen([sys.executable, "worker.py", "--exit-when-idle"], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(args.workers)]
        try:
            for worker in workers:
                worker.wait(timeout=3600)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait()
        drain_seconds = time.monotonic() - started

        executions = Counter(path.name.split(".")[0] for path in record_dir.iterdir())
        with app.app_context():
            statuses = dict(db.session.execute(text("SELECT status, count(*) FROM tunix_runs GROUP BY status")).all())
            per_worker = db.session.execute(text(
                "SELECT count(DISTINCT worker_id), min(c), max(c) FROM "
                "(SELECT worker_id, count(*) AS c FROM tunix_runs GROUP BY worker_id) t")).one()
            db.session.remove()

    executed = set(executions)
    print(f"{args.workers} workers, {args.runs} runs queued in {enqueue_seconds:.1f} s, "
          f"drained in {drain_seconds:.1f} s ({args.runs / drain_seconds:.0f} runs/s, {os.cpu_count()} CPU cores)")
    print(f"executions counted by the trainer: {sum(executions.values())}")
    print(f"runs executed exactly once:        {sum(1 for c in executions.values() if c == 1)}")
    print(f"runs executed more than once:      {sum(1 for c in executions.values() if c > 1)}")
    print(f"runs never executed (lost):        {len(run_ids - executed)}")
    print(f"runs left non-terminal:            {sum(v for k, v in statuses.items() if k in ('pending', 'running', 'cancelling'))}")
    print(f"final statuses:                    {statuses}")
    print(f"runs per worker:                   {per_worker[1]}..{per_worker[2]} across {per_worker[0]} workers")


if __name__ == "__main__":
    main()
