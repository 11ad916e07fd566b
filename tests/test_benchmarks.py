"""Benchmarks that cannot rot: every script under bench/ is in `make bench`, and runs here at its smallest.

The smoke runs assert no figure (speed belongs to the benchmarks, not to the suite): only that each
script runs to its end on a real Postgres, prints its table and, where it keeps figures, writes them.
They write into the test's own folder (TUNIX_BENCH_RESULTS_DIR), never over bench/results/.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

BENCH = ROOT / "bench"
# Each benchmark's smallest parameters, and the JSON it writes (None: it prints only).
SMOKE = {
    "hot_path.py": (["--runs", "400", "--pending", "40", "--seconds", "0.3", "--rounds", "1", "--polls", "50"],
                    "hot_path.json"),
    "queue_claim.py": (["--runs", "20", "--workers", "1", "--rounds", "1"], "queue_claim.json"),
    "first_step.py": (["--warm-runs", "1"], "first_step.json"),
    "worker_memory.py": (["--runs", "12"], "worker_memory.json"),
    "exactly_once.py": (["--workers", "2", "--runs", "20"], None),
    "wakeup_latency.py": (["--runs", "3", "--poll-runs", "1"], None),
    "trainer_overhead.py": (["--steps", "10", "--repeats", "1"], "trainer_overhead.json"),
    "upload_memory.py": (["--lines", "200"], None),
    "evaluation.py": (["--examples", "4", "--max-new-tokens", "4", "--runs", "60", "--datasets", "2"],
                      "evaluation.json"),
    "sweep_throughput.py": (["--trials", "3", "--workers", "1", "--parallelism", "2"], "sweep_throughput.json"),
    "model_families.py": (["--steps", "4", "--repeats", "1", "--families", "llama"], "model_families.json"),
    "device_placement.py": (["--runs", "2", "--steps", "2", "--repeats", "1", "--pending", "50", "--claims", "10"],
                            "device_placement.json"),
    "artifact_store.py": (["--mb", "16", "--repeats", "1", "--stream-mb", "16"], "artifact_store.json"),
    "model_registry.py": (["--sizes-mb", "4", "--versions", "20", "--page-repeats", "1"], "model_registry.json"),
    "gpu_check.py": (["--steps", "3", "--batch-per-device", "2", "--cpu-devices", "2"], "gpu_check.json"),
    "playground.py": (["--warm", "2", "--tokens", "16", "--queued", "3", "--short-tokens", "8"], "playground.json"),
}


def benchmark_scripts() -> set[str]:
    """The scripts under bench/ that run as a program (the helpers they share do not)."""
    scripts = set()
    for path in BENCH.glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body):
            scripts.add(path.name)
    return scripts


def make_bench_scripts() -> list[str]:
    """The scripts the Makefile's bench target runs, in its order."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    return re.findall(r"bench/(\w+\.py)", recipe)


def test_every_benchmark_is_in_make_bench_and_in_the_smoke_test():
    scripts = benchmark_scripts()
    assert sorted(make_bench_scripts()) == sorted(scripts), "make bench must run every script under bench/"
    assert set(SMOKE) == scripts, "every script under bench/ needs its smallest parameters in SMOKE"


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_the_benchmark_runs_at_its_smallest(script, database_url, tmp_path):
    arguments, results_file = SMOKE[script]
    env = dict(os.environ, DATABASE_URL=database_url, TUNIX_BENCH_RESULTS_DIR=str(tmp_path / "results"),
               TUNIX_INSTANCE_DIR=str(tmp_path / "instance"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run([sys.executable, str(BENCH / script), *arguments], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert done.stdout.strip(), f"{script} printed nothing"
    if results_file:
        assert (tmp_path / "results" / results_file).stat().st_size > 0
