"""Time to the first training step of `tiny`, cold and with JAX's persistent compilation cache warm.

Each run is the real trainer process on a fresh run directory (the sample dataset, 30 steps),
as a worker starts it: cold with an empty cache folder, then three more with the folder the
first one filled (TUNIX_COMPILATION_CACHE_DIR, on by default under the instance folder).

    .venv/bin/python bench/first_step.py [--warm-runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import write_results  # noqa: E402

def one_run(root: Path, name: str, cache: Path) -> dict:
    from app.contract.run_files import COMPILATION_CACHE_ENV, SUMMARY_FILE
    from app.datasets.sample import sample_examples
    from app.execution.run_directory import write_run_directory
    from app.runs.validation import validate_run_config

    config = validate_run_config({"dataset_key": "arithmetic-v1", "max_steps": 30})
    run_dir = write_run_directory(root / name, name, config, sample_examples())
    env = dict(os.environ, **{COMPILATION_CACHE_ENV: str(cache)}, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "app.trainer", str(run_dir)], cwd=run_dir, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    before = summary["evaluation"]["before"] or {}
    return {"time_to_first_step_s": summary["time_to_first_step_seconds"],
            "evaluation_before_s": before.get("seconds"), "train_s": summary["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        root, cache = Path(tmp) / "runs", Path(tmp) / "cache"
        cold = one_run(root, "cold", cache)
        entries = sum(1 for _ in cache.rglob("*") if _.is_file())
        warm = [one_run(root, f"warm{i}", cache) for i in range(args.warm_runs)]
    warm_first = statistics.median(w["time_to_first_step_s"] for w in warm)
    result = {"cold": cold, "warm": warm, "cache_entries": entries,
              "ratio_warm_to_cold": round(warm_first / cold["time_to_first_step_s"], 3)}
    print("Time to the first step of tiny (30 steps; the before-training evaluation, 24 answers, comes first)")
    print(f"  cold, empty cache:      {cold['time_to_first_step_s']:>6} s (of which scoring before training "
          f"{cold['evaluation_before_s']} s); the cache then held {entries} files")
    print(f"  warm cache, median of {args.warm_runs}: {warm_first:>6} s (scoring before training "
          f"{statistics.median(w['evaluation_before_s'] or 0 for w in warm)} s)")
    print(f"  warm / cold: {result['ratio_warm_to_cold']}")
    write_results("first_step", result)


if __name__ == "__main__":
    main()
