"""Where a benchmark writes its figures: bench/results/, or TUNIX_BENCH_RESULTS_DIR (the smoke test's own folder)."""
from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """The folder a benchmark's JSON goes to, made if missing."""
    folder = Path(os.environ.get("TUNIX_BENCH_RESULTS_DIR") or ROOT / "bench" / "results")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(name: str, figures) -> Path:
    """Write one benchmark's figures as `<name>.json` and say where."""
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, default=str))
    return path
