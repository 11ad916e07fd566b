"""The queue's own cost: claim and complete, no trainer, 1, 2 and 4 worker processes, beside pgqueuer.

Ours: each process loops `claim_next_run` (the locking SELECT ... SKIP LOCKED and the UPDATE to
running, committed) then `lifecycle.finish` (the compare-and-set to completed, committed), until
the queue is empty: exactly what a worker does around a trainer. Each process times its own loop,
from its first claim to its empty queue, so neither side's start-up is counted. pgqueuer's equivalent is
`dequeue(batch_size=1)` then `log_jobs(successful)`, in a virtual environment of its own
(bench/requirements-pgqueuer.txt, made by `make bench`), on the same Postgres.

    .venv/bin/python bench/queue_claim.py [--runs 2000] [--rounds 3] [--pgqueuer-python .venv-bench/bin/python]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import results_dir, write_results  # noqa: E402
PGQUEUER_WORKER = r'''
import asyncio, sys, time, uuid
from datetime import timedelta
import asyncpg
from pgqueuer.queries import EntrypointExecutionParameter, Queries

async def main(dsn, mode, count):
    connection = await asyncpg.connect(dsn)
    queries = Queries.from_asyncpg_connection(connection)
    if mode == "install":
        await queries.install()
        return
    if mode == "enqueue":
        for first in range(0, count, 1000):
            n = min(1000, count - first)
            await queries.enqueue(["bench"] * n, [None] * n, [0] * n)
        return
    manager, done = uuid.uuid4(), 0
    params = {"bench": EntrypointExecutionParameter(concurrency_limit=0)}
    started = time.perf_counter()
    while True:
        jobs = await queries.dequeue(batch_size=1, entrypoints=params, queue_manager_id=manager,
                                     global_concurrency_limit=None, heartbeat_timeout=timedelta(seconds=30))
        if not jobs:
            break
        await queries.log_jobs([(job, "successful", None) for job in jobs])
        done += len(jobs)
    print(done, time.perf_counter() - started)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
'''


def ours_worker(url: str) -> tuple[int, float]:
    """One worker process of ours: claim and finish until nothing is pending; how many it did, in how long."""
    from app import create_app
    from app.queue import store
    from app.runs import lifecycle
    from app.run_states import COMPLETED

    app = create_app({"DATABASE_URL": url})
    done = 0
    with app.app_context(), lifecycle.own_connection():  # as worker.py's loop does
        worker_id = f"bench-{os.getpid()}"
        started = time.perf_counter()
        while True:
            leased = store.claim_next_run(worker_id)
            if leased is None:
                break
            lifecycle.finish(leased.id, COMPLETED, lease=leased.lease)
            done += 1
    return done, time.perf_counter() - started


def seed_ours(url: str, runs: int) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO tunix_runs (id, status, mode, dataset_key, model_id, config, created_at, queued_at) "
            "SELECT gen_random_uuid(), 'pending', 'async', 'arithmetic-v1', 'tiny', '{}'::jsonb, now(), "
            "now() + g * interval '1 microsecond' FROM generate_series(1, :n) g"), {"n": runs})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE tunix_runs"))
    engine.dispose()


def drain(commands: list[list[str]], env: dict) -> tuple[float, int]:
    """Start the workers together; the longest of their loops (start-up left out, for both queues) and the
    jobs they did in all."""
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for c in commands]
    reports = [(p.communicate()[0].strip().splitlines() or ["0 0"])[-1].split() for p in procs]
    return max(float(seconds) for _, seconds in reports), sum(int(done) for done, _ in reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per worker count (median kept)")
    parser.add_argument("--pgqueuer-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(*ours_worker(args.child))
        return

    from sqlalchemy.engine import make_url

    from bench.bench_db import scratch_database

    rows = []
    pgqueuer = Path(args.pgqueuer_python).exists()
    with scratch_database() as url:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
        script = results_dir() / "_pgqueuer_worker.py"
        script.write_text(PGQUEUER_WORKER)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if pgqueuer:
            subprocess.run([args.pgqueuer_python, str(script), dsn, "install", "0"], check=True)
        for workers in args.workers:
            ours, theirs = [], []
            # Rounds alternate between the two queues: this machine's disk and CPU drift by tens of percent
            # over a minute, and the median of alternating rounds is fair to both.
            for _ in range(args.rounds):
                seed_ours(url, args.runs)
                seconds, done = drain([[sys.executable, __file__, "--child", url]] * workers, env)
                ours.append(done / seconds)
                if pgqueuer:
                    subprocess.run([args.pgqueuer_python, str(script), dsn, "enqueue", str(args.runs)], check=True)
                    seconds, done = drain([[args.pgqueuer_python, str(script), dsn, "work", "0"]] * workers, env)
                    theirs.append(done / seconds)
            row = {"workers": workers, "rounds": [round(r, 1) for r in ours],
                   "ours_per_s": round(statistics.median(ours), 1),
                   "ours_per_s_per_worker": round(statistics.median(ours) / workers, 1)}
            if pgqueuer:
                row.update(pgqueuer_rounds=[round(r, 1) for r in theirs],
                           pgqueuer_per_s=round(statistics.median(theirs), 1),
                           pgqueuer_per_s_per_worker=round(statistics.median(theirs) / workers, 1))
            rows.append(row)
        script.unlink()

    print(f"Claim and complete, {args.runs:,} queued each time, no trainer (runs/s, all workers together, "
          f"median of {args.rounds} alternating rounds)")
    print(f"{'workers':>8}{'ours':>10}{'per worker':>12}{'pgqueuer':>10}{'per worker':>12}")
    for r in rows:
        print(f"{r['workers']:>8}{r['ours_per_s']:>10}{r['ours_per_s_per_worker']:>12}"
              f"{r.get('pgqueuer_per_s', '-'):>10}{r.get('pgqueuer_per_s_per_worker', '-'):>12}")
    if not pgqueuer:
        print(f"(pgqueuer not measured: {args.pgqueuer_python} is missing; `make bench` creates it)")
    write_results("queue_claim", rows)


if __name__ == "__main__":
    main()
