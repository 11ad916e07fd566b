"""Several runs per worker: one-device runs side by side on a 4-device worker against the same runs one after
another, and what a claim costs with many pending runs of mixed sizes.

Side by side: `--runs` real `tiny` runs (the Tunix trainer, `--steps` steps each) are queued and drained by
one `worker.py --exit-when-idle` whose host shows 4 JAX CPU devices (XLA's host-device flag), so it runs
them at once; then the same runs by a worker with one device, so one at a time. The pairs are interleaved
`--repeats` times, after one warm-up run that fills JAX's compilation cache, and the medians reported.
On a CPU the runs share its cores: the gain is what running side by side saves of each run's start
(imports, compilation) and of its idle moments.

Claims: `--pending` pending runs asking for 1, 2, 4 or 8 devices (an even, fixed mix) and `--claims`
claims by a worker with 8 devices, each claim with a random number of them free; once with a long
passover (smaller runs may go first) and once with none (a waiting larger run holds younger ones back,
so a claim finds nothing while the oldest run does not fit).

    .venv/bin/python bench/device_placement.py [--runs 4] [--steps 30] [--repeats 3] [--pending 1000] [--claims 300]
"""
from __future__ import annotations

import argparse
import os
import random
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

SIZES = (1, 2, 4, 8)


def _drain(app, url: str, artifacts: Path, runs: int, steps: int, host_devices: int) -> dict:
    """Queue `runs` one-device runs, drain them with one worker on `host_devices` devices; wall time and more."""
    from sqlalchemy import text

    from app.extensions import db
    from app.runs import service

    with app.app_context():
        ids = [service.submit_run({"dataset_key": "arithmetic-v1", "max_steps": steps, "eval_max_examples": 0,
                                   "checkpoint_every_n_steps": steps, "eval_every_n_steps": steps}, "async")[0].id
               for _ in range(runs)]
        db.session.remove()
    env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(artifacts), TUNIX_WORKER_POLL_SECONDS="0.2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={host_devices}")
    started = time.monotonic()
    subprocess.run([sys.executable, "worker.py", "--exit-when-idle"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
    wall = time.monotonic() - started
    with app.app_context():
        rows = db.session.execute(text(
            "SELECT status, (result->>'steps_per_second')::float, extract(epoch FROM max(completed_at) OVER () - "
            "min(started_at) OVER ()) FROM tunix_runs WHERE id = ANY(:ids)"), {"ids": ids}).all()
        db.session.remove()
    if any(row[0] != "completed" for row in rows):
        raise SystemExit(f"a run did not complete: {[row[0] for row in rows]}")
    return {"wall_seconds": wall, "busy_seconds": float(rows[0][2]),
            "steps_per_second_each": statistics.median(row[1] for row in rows)}


def side_by_side(app, url: str, tmp: Path, runs: int, steps: int, repeats: int) -> dict:
    # One run first, not counted: it fills JAX's compilation cache, which every later run then reads.
    _drain(app, url, tmp / "warm-up", 1, steps, host_devices=1)
    together, alone = [], []
    for repeat in range(repeats):
        together.append(_drain(app, url, tmp / f"together-{repeat}", runs, steps, host_devices=runs))
        alone.append(_drain(app, url, tmp / f"alone-{repeat}", runs, steps, host_devices=1))
    med = lambda rows, key: round(statistics.median(r[key] for r in rows), 2)  # noqa: E731
    result = {"runs": runs, "steps": steps, "repeats": repeats,
              "side_by_side_seconds": med(together, "busy_seconds"),
              "one_after_another_seconds": med(alone, "busy_seconds"),
              "side_by_side_steps_per_second_each": med(together, "steps_per_second_each"),
              "alone_steps_per_second_each": med(alone, "steps_per_second_each")}
    result["speedup"] = round(result["one_after_another_seconds"] / result["side_by_side_seconds"], 2)
    return result


def claims(app, pending: int, count: int) -> dict:
    from sqlalchemy import text

    from app.extensions import db
    from app.queue import store
    from app.runs import lifecycle

    figures = {}
    for label, passover in (("passover_long", 3600.0), ("passover_none", 0.0)):
        rng = random.Random(7)
        with app.app_context():
            db.session.execute(text("DELETE FROM tunix_runs"))
            db.session.execute(text(
                "INSERT INTO tunix_runs (id, status, mode, dataset_key, model_id, config, created_at, queued_at, "
                "devices) SELECT gen_random_uuid(), 'pending', 'async', 'arithmetic-v1', 'tiny', '{}'::jsonb, "
                "now(), clock_timestamp() - make_interval(secs => (:n - g) * 0.001), "
                "(ARRAY[1, 2, 4, 8])[1 + (g * 7919) % 4] "
                "FROM generate_series(1, :n) AS g"), {"n": pending})
            db.session.commit()
            times, taken = [], 0
            with lifecycle.own_connection():
                for _ in range(count):
                    free = sorted(rng.sample(range(8), rng.randint(1, 8)))
                    t0 = time.perf_counter()
                    run = store.claim_next_run("bench", free, 8, passover)
                    times.append((time.perf_counter() - t0) * 1000)
                    if run is not None:
                        taken += 1
                        # Back to pending where it was, so the queue keeps its size and mix.
                        db.session.execute(text("UPDATE tunix_runs SET status = 'pending', worker_id = NULL, "
                                                "device_ids = NULL WHERE id = :id"), {"id": run.id})
                        db.session.commit()
            db.session.remove()
        times.sort()
        figures[label] = {"claims": count, "claimed": taken, "median_ms": round(statistics.median(times), 2),
                          "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2), "max_ms": round(times[-1], 2)}
    return {"pending": pending, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pending", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=300)
    args = parser.parse_args()

    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        os.environ.update(TUNIX_INSTANCE_DIR=tmp)
        from app import create_app

        app = create_app({"DATABASE_URL": url, "MAX_ACTIVE_RUNS_PER_USER": 0})
        packing = side_by_side(app, url, Path(tmp), args.runs, args.steps, args.repeats)
        claiming = claims(app, args.pending, args.claims)
        with app.app_context():
            from app.extensions import db

            db.engine.dispose()

    print(f"{packing['runs']} one-device tiny runs of {packing['steps']} steps, real trainer, medians of "
          f"{packing['repeats']}:")
    print(f"  side by side on one 4-device worker: {packing['side_by_side_seconds']} s from first start to last end "
          f"({packing['side_by_side_steps_per_second_each']} steps/s each)")
    print(f"  one after another on one device:     {packing['one_after_another_seconds']} s "
          f"({packing['alone_steps_per_second_each']} steps/s each)")
    print(f"  side by side finishes them {packing['speedup']}x as fast")
    print(f"claims with {claiming['pending']} pending runs of 1, 2, 4 and 8 devices, an 8-device worker:")
    for label in ("passover_long", "passover_none"):
        f = claiming[label]
        print(f"  {label.replace('_', ' ')}: median {f['median_ms']} ms, p95 {f['p95_ms']} ms, max {f['max_ms']} ms "
              f"({f['claimed']} of {f['claims']} claims found a run that fits)")
    write_results("device_placement", {"side_by_side": packing, "claims": claiming})


if __name__ == "__main__":
    main()
