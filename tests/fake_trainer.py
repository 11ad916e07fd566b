"""A stand-in trainer for platform tests: prints progress, sleeps, exits with a chosen code.

    python tests/fake_trainer.py [--steps N] [--sleep S] [--exit-code C] [--stdout-bytes B]
                                 [--spawn-child] [--record-dir DIR] [--artifacts] RUN_DIR
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from app.contract.run_files import CHECKPOINTS_DIR, DATASET_FILE, METRICS_FILE, MODEL_DIR, RUN_CONFIG_FILE


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def write_artifacts(run_dir: Path, steps: int) -> None:
    """Files where the real trainer puts them: an exported model, one checkpoint step, the metrics."""
    model = run_dir / MODEL_DIR
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    (model / "tokenizer.json").write_text("{}")
    for part in ("model_params/d/0a1b", "optimizer_state/d/2c3d", "_CHECKPOINT_METADATA"):
        path = run_dir / CHECKPOINTS_DIR / str(steps) / part
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\1" * 1000)
    (run_dir / METRICS_FILE).write_text(json.dumps({"train": [], "eval": []}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep before finishing")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--stdout-bytes", type=int, default=0)
    parser.add_argument("--spawn-child", action="store_true", help="start a grandchild that sleeps")
    parser.add_argument("--record-dir", help="write one file per execution here (exactly-once checks)")
    parser.add_argument("--artifacts", action="store_true", help="write a model, a checkpoint and metrics as the "
                                                                  "real trainer does")
    parser.add_argument("run_dir")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    config = json.loads((run_dir / RUN_CONFIG_FILE).read_text())
    examples = sum(1 for _ in (run_dir / DATASET_FILE).open())
    if args.record_dir:
        record = Path(args.record_dir) / f"{config['run_id']}.{os.getpid()}"
        record.write_text(str(time.time()))
    pids = [os.getpid()]
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pids.append(child.pid)
    (run_dir / "pids.json").write_text(json.dumps(pids))

    print(f"fake trainer: {examples} examples, model {config['model_id']}", flush=True)
    emit("start", total_steps=args.steps, train_examples=examples)
    for step in range(1, args.steps + 1):
        emit("step", step=step, loss=round(4.0 / step, 4), learning_rate=config["learning_rate"],
             tokens_per_second=1000.0, elapsed_seconds=0.01 * step)
    if args.steps:
        emit("eval", step=args.steps, loss=4.5 / args.steps)
    if args.stdout_bytes:
        line = "x" * 99 + "\n"
        sys.stdout.write(line * (args.stdout_bytes // 100))
        sys.stdout.flush()
    time.sleep(args.sleep)
    if args.exit_code:
        print(f"fake trainer: failing on purpose with code {args.exit_code}", file=sys.stderr, flush=True)
        sys.exit(args.exit_code)
    if args.artifacts:
        write_artifacts(run_dir, args.steps)
    emit("end", steps=args.steps, final_loss=round(4.0 / max(args.steps, 1), 4), best_loss=4.0 / max(args.steps, 1),
         tokens_per_second=1000.0)


if __name__ == "__main__":
    main()
