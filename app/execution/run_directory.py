"""Writing the scratch folder a run is trained in with what the trainer reads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from app.contract.run_files import DATASET_FILE, EVAL_DATASET_FILE, RUN_CONFIG_FILE
from app.datasets import store as dataset_store
from app.runs.lifecycle import LeasedRun


def write_run_directory(run_dir: Path, run_id: Any, config: dict[str, Any],
                        examples: Iterable[Any], eval_examples: Iterable[Any] | None = None) -> Path:
    """Create the folder a trainer runs in with its config and its dataset (and eval dataset) as JSONL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(run_dir / RUN_CONFIG_FILE, json.dumps({"run_id": str(run_id), **config}, indent=2))
    _export(run_dir / DATASET_FILE, examples)
    if eval_examples is not None:
        _export(run_dir / EVAL_DATASET_FILE, eval_examples)
    return run_dir


def _export(path: Path, examples: Iterable[Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps({"prompt": example.prompt, "response": example.response}) + "\n")
    tmp.replace(path)


def prepare_run_directory(run: LeasedRun, run_dir: Path, model_path: Path | None = None) -> Path:
    """Write the folder of a run about to execute: its config and its datasets, read from the database.
    `model_path` replaces the config's model_id (where a registered base is fetched to)."""
    eval_key = run.config.get("eval_dataset_key")
    config = run.config if model_path is None else {**run.config, "model_id": str(model_path)}
    return write_run_directory(run_dir, run.id, config, dataset_store.iter_examples(run.dataset_key),
                               dataset_store.iter_examples(eval_key) if eval_key else None)


def _write_atomically(path: Path, content: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    tmp.replace(path)
