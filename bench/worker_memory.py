"""Memory of an idle worker.py after 10 and after 1,000 runs (a trainer that exits at once).

    .venv/bin/python bench/worker_memory.py [--runs 1000]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import write_results  # noqa: E402
from bench.bench_db import scratch_database  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        os.environ["TUNIX_INSTANCE_DIR"] = tmp
        from sqlalchemy import text

        from app import create_app
        from app.extensions import db
        from app.runs import service as run_service

        app = create_app({"DATABASE_URL": url, "MAX_ACTIVE_RUNS_PER_USER": 0})
        env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(Path(tmp) / "artifacts"),
                   TUNIX_TRAIN_COMMAND=shlex.join([sys.executable, str(ROOT / "tests" / "fake_trainer.py"),
                                                   "--steps", "3"]))
        worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        readings = {}
        try:
            with app.app_context():
                done = 0
                for target in (10, args.runs):
                    for _ in range(target - done):
                        run_service.submit_run({"dataset_key": "arithmetic-v1"}, "async")
                    done = target
                    while db.session.scalar(text("SELECT count(*) FROM tunix_runs WHERE status <> 'completed'")):
                        db.session.rollback()
                        time.sleep(0.2)
                    db.session.rollback()
                    time.sleep(1.0)  # idle again
                    readings[target] = rss_mb(worker.pid)
                db.session.remove()
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    print(f"RSS of an idle worker.py: {readings[10]} MB after 10 runs, {readings[args.runs]} MB after "
          f"{args.runs:,} runs")
    write_results("worker_memory", {"rss_mb_after_runs": readings})


if __name__ == "__main__":
    main()
