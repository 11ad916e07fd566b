"""Names of the files in a run directory, written by the execution module and the trainer."""

RUN_CONFIG_FILE = "run_config.json"  # the validated config, plus run_id
DATASET_FILE = "dataset.jsonl"  # the dataset export, one {"prompt", "response"} per line
CHECKPOINTS_DIR = "checkpoints"  # orbax checkpoints, one folder per saved step
MODEL_DIR = "model"  # the exported model (full-weight runs), Hugging Face layout
SUMMARY_FILE = "summary.json"  # the trainer's closing summary
METRICS_FILE = "metrics.json"  # the loss series, train and eval
