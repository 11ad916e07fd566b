"""A sweep's own cost: trials per second through the queue, and what Optuna's ask and tell add per trial.

A sweep of `--trials` trials (TPE over the learning rate, `--parallelism` at a time) is drained by
`--workers` worker.py processes whose trainer is the test suite's stand-in, exiting at once
with a final loss. Then, in this process, the same number of asks and tells are timed against
the same RDB storage, which is the part of each trial's bookkeeping that is Optuna's.

    .venv/bin/python bench/sweep_throughput.py [--trials 200] [--workers 4] [--parallelism 8]
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import write_results  # noqa: E402
from bench.bench_db import scratch_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--parallelism", type=int, default=8)
    args = parser.parse_args()

    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        os.environ.update(TUNIX_INSTANCE_DIR=tmp)
        from sqlalchemy import text

        from app import create_app
        from app.accounts import service as accounts
        from app.extensions import db
        from app.sweeps import service as sweep_service, study

        app = create_app({"DATABASE_URL": url, "MAX_ACTIVE_RUNS_PER_USER": 0})
        with app.app_context():
            user, _ = accounts.create_user("bench")
            started = time.monotonic()
            sweep = sweep_service.create_sweep({
                "name": "bench", "base": {"dataset_key": "arithmetic-v1", "max_steps": 1},
                "space": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
                "objective": {"metric": "final_loss"}, "max_trials": args.trials, "parallelism": args.parallelism,
                "sampler": "tpe"}, accounts.Actor.of(user))
            sweep_id = sweep.id
            create_seconds = time.monotonic() - started
            db.session.remove()

        env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(Path(tmp) / "artifacts"),
                   TUNIX_TRAIN_COMMAND=shlex.join([sys.executable, str(ROOT / "tests" / "fake_trainer.py"),
                                                   "--steps", "1"]),
                   TUNIX_WORKER_POLL_SECONDS="0.5")
        started = time.monotonic()
        workers = [subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(args.workers)]
        try:
            with app.app_context():
                deadline = time.monotonic() + 3600
                while time.monotonic() < deadline:
                    status = db.session.execute(text("SELECT status FROM sweeps WHERE id = :id"),
                                                {"id": sweep_id}).scalar()
                    db.session.rollback()
                    if status != "running":
                        break
                    time.sleep(0.2)
                drain_seconds = time.monotonic() - started
                runs = db.session.execute(text(
                    "SELECT count(*) / 2, max(active) FROM (SELECT "
                    "sum(d) OVER (ORDER BY t, d) AS active FROM (SELECT created_at AS t, 1 AS d FROM tunix_runs "
                    "WHERE sweep_id = :id UNION ALL SELECT completed_at, -1 FROM tunix_runs WHERE sweep_id = :id) e) x"),
                    {"id": sweep_id}).one()
                trials = db.session.execute(text("SELECT count(*), count(*) FILTER (WHERE state = 'complete') "
                                                 "FROM sweep_trials WHERE sweep_id = :id"), {"id": sweep_id}).one()
                phases = db.session.execute(text(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)), "
                    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - started_at)), "
                    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM t.told_at - r.completed_at)) "
                    "FROM tunix_runs r JOIN sweep_trials t ON t.run_id = r.id WHERE r.sweep_id = :id"),
                    {"id": sweep_id}).one()
                db.session.remove()
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)

        with app.app_context():
            config = study.StudyConfig(f"overhead-{uuid.uuid4()}", "minimize",
                                       {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
                                       "tpe", "none", 0)
            study.create(config)
            asks, tells = [], []
            for number in range(1, args.trials + 1):
                t0 = time.perf_counter()
                asked = study.ask(config, number)
                t1 = time.perf_counter()
                study.tell(config, asked.trial_id, "complete", (asked.params["learning_rate"] - 3e-3) ** 2)
                t2 = time.perf_counter()
                asks.append((t1 - t0) * 1000)
                tells.append((t2 - t1) * 1000)
            db.session.remove()

    result = {
        "trials": args.trials, "workers": args.workers, "parallelism": args.parallelism,
        "create_seconds": round(create_seconds, 2), "drain_seconds": round(drain_seconds, 2),
        "trials_per_second": round(args.trials / drain_seconds, 2), "runs": runs[0], "most_active": runs[1],
        "trials_recorded": trials[0], "trials_complete": trials[1],
        "median_wait_in_queue_s": round(phases[0], 3), "median_run_s": round(phases[1], 3),
        "median_end_to_told_s": round(phases[2], 3),
        "ask_ms_median": round(statistics.median(asks), 1), "ask_ms_last_50": round(statistics.median(asks[-50:]), 1),
        "tell_ms_median": round(statistics.median(tells), 1),
    }
    print(f"{args.trials}-trial sweep, TPE, {args.parallelism} at a time, {args.workers} workers, a trainer that "
          f"exits at once")
    print(f"  created (study + first trials): {result['create_seconds']} s")
    print(f"  drained in {result['drain_seconds']} s: {result['trials_per_second']} trials/s; "
          f"{result['runs']} runs, at most {result['most_active']} queued or running at once, "
          f"{result['trials_complete']} of {result['trials_recorded']} trials complete")
    print(f"  per trial, medians: {result['median_wait_in_queue_s']} s queued, {result['median_run_s']} s from claim "
          f"to end (the trainer process included), {result['median_end_to_told_s']} s from its end to the study")
    print(f"  Optuna per trial, same RDB storage: ask {result['ask_ms_median']} ms median "
          f"({result['ask_ms_last_50']} ms over the last 50, TPE's history grows), tell {result['tell_ms_median']} ms")
    write_results("sweep_throughput", result)


if __name__ == "__main__":
    main()
