"""Where a run's files live and what they are called: shared by the execution module, the trainer and
the artifacts listing."""
from __future__ import annotations

from pathlib import Path
from typing import Any

RUN_CONFIG_FILE = "run_config.json"  # the validated config, plus run_id
DATASET_FILE = "dataset.jsonl"  # the dataset export, one {"prompt", "response"} per line
CHECKPOINTS_DIR = "checkpoints"  # orbax checkpoints, one folder per saved step
MODEL_DIR = "model"  # the exported model, Hugging Face layout (a LoRA run's with its adapters merged)
ADAPTER_DIR = "adapter"  # a LoRA run's adapters alone, in PEFT's layout
SUMMARY_FILE = "summary.json"  # the trainer's closing summary
TRAINER_LOCK_FILE = ".trainer.lock"  # held by the one trainer writing the directory (and its worker)
METRICS_FILE = "metrics.json"  # the loss series, train and eval
EVAL_DATASET_FILE = "eval_dataset.jsonl"  # the eval_dataset_key export, when the run names one
PREDICTIONS_FILE = "predictions.jsonl"  # every generated answer and its verdicts, before and after
EVALUATION_BEFORE_FILE = "evaluation_before.json"  # the before-training scores, kept for a resumed run
# The environment variable that hands the trainer JAX's persistent compilation cache folder ("" for none).
COMPILATION_CACHE_ENV = "TUNIX_COMPILATION_CACHE_DIR"


def run_directory(artifacts_root: str | Path, run_id: Any) -> Path:
    """Where one run's files live: a folder named after its id under the artifacts root."""
    return Path(artifacts_root) / str(run_id)
