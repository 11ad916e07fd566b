"""What a run's files are called inside its folder: shared by the execution module, the trainer and
the artifact store (which alone builds their keys, app/artifacts/)."""
from __future__ import annotations

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
RUN_LOG_FILE = "run.log"  # the run's output as its page shows it, stored with its files at the end
EVALUATION_BEFORE_FILE = "evaluation_before.json"  # the before-training scores, kept for a resumed run
# The environment variable that hands the trainer JAX's persistent compilation cache folder ("" for none).
COMPILATION_CACHE_ENV = "TUNIX_COMPILATION_CACHE_DIR"

BASE_MODEL_DIR = "base_model"  # a registered version the run trains from, fetched and checked before the trainer
