"""A stand-in trainer for platform tests: prints progress, sleeps, exits with a chosen code.

    python tests/fake_trainer.py [--steps N] [--sleep S] [--wait-for PATH] [--exit-code C] [--stdout-bytes B]
                                 [--spawn-child] [--record-dir DIR] [--artifacts] [--evaluate]
                                 [--evals N] [--eval-sleep S] [--worse-after-trial K]
                                 [--checkpoint-every N] [--step-sleep S] RUN_DIR

With --evaluate it scores the last examples as the real trainer does (predictions.jsonl, evaluate
events, "evaluation" in the summary): before training every answer is wrong; after, the first
round(answer_rate * N) are right, answer_rate = min(1, learning_rate * 100), so a test knows which
run should rank first. Losses fall faster with a higher learning rate for the same reason.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from app.contract import scoring
from app.contract.device_mesh import DEVICE_IDS_ENV, host_device_count
from app.contract.run_files import (CHECKPOINTS_DIR, DATASET_FILE, METRICS_FILE, MODEL_DIR, PREDICTIONS_FILE,
                                    RUN_CONFIG_FILE, SUMMARY_FILE)


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def write_artifacts(run_dir: Path, steps: int, model_bytes: int = 4096, config: dict | None = None) -> None:
    """Files where the real trainer puts them: an exported model (its config.json names the settings that made
    it, so two runs of other settings export other files), one checkpoint step, the metrics."""
    model = run_dir / MODEL_DIR
    model.mkdir(exist_ok=True)
    made_with = {k: (config or {}).get(k) for k in ("learning_rate", "seed", "dataset_key")}
    (model / "config.json").write_text(json.dumps({"model_type": "qwen3", "num_attention_heads": 4,
                                                   "num_key_value_heads": 2, "made_with": made_with}))
    with (model / "model.safetensors").open("wb") as out:  # varied bytes: a misplaced part would show
        block = bytes(range(256)) * 4096
        for start in range(0, model_bytes, len(block)):
            out.write(block[:min(len(block), model_bytes - start)])
    (model / "tokenizer.json").write_text("{}")
    write_checkpoint(run_dir, steps)
    (run_dir / METRICS_FILE).write_text(json.dumps({"train": [], "eval": []}))
    (run_dir / SUMMARY_FILE).write_text(json.dumps({"steps": steps}))


def write_checkpoint(run_dir: Path, step: int) -> None:
    """A checkpoint step as Orbax writes one: under a temporary name, renamed when it is whole."""
    if (run_dir / CHECKPOINTS_DIR / str(step)).is_dir():
        return
    partial = run_dir / CHECKPOINTS_DIR / f"{step}.orbax-checkpoint-tmp-1"
    for part in ("model_params/d/0a1b", "optimizer_state/d/2c3d", "_CHECKPOINT_METADATA"):
        path = partial / part
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([step % 256]) * 1000)
    partial.rename(run_dir / CHECKPOINTS_DIR / str(step))


def evaluate(run_dir: Path, config: dict, eval_cap: int = 5) -> dict:
    """Score the last eval_max_examples examples (at most eval_cap); the right answers depend on the learning
    rate."""
    if config["eval_max_examples"] == 0:
        return {"skipped": "eval_max_examples is 0"}
    lines = [json.loads(line) for line in (run_dir / DATASET_FILE).open() if line.strip()]
    examples = lines[-min(eval_cap, config["eval_max_examples"], len(lines)):]
    right = round(min(1.0, config["learning_rate"] * 100) * len(examples))
    passes = {}
    with (run_dir / PREDICTIONS_FILE).open("w") as out:
        for phase in ("before", "after"):
            emit("evaluate", phase=phase, done=0, total=len(examples))
            verdicts = []
            for index, example in enumerate(examples):
                correct = phase == "after" and index < right
                prediction = example["response"] if correct else "I do not know."
                verdict = scoring.judge(prediction, example["response"])
                verdicts.append(verdict)
                out.write(json.dumps({"phase": phase, "index": index, "prompt": example["prompt"],
                                      "reference": example["response"], "prediction": prediction,
                                      "exact_match": verdict.exact, "answer_match": verdict.answer,
                                      "generated_tokens": len(prediction)}) + "\n")
            passes[phase] = scoring.summarize(verdicts, [4] * len(verdicts), 0.5)
            emit("evaluate", phase=phase, done=len(examples), total=len(examples), metrics=passes[phase])
    return {**passes, "examples": len(examples), "dataset_key": config.get("eval_dataset_key") or config["dataset_key"],
            "source": "eval dataset" if config.get("eval_dataset_key") else "held-out split",
            "error": None}


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep before finishing")
    parser.add_argument("--wait-for", help="before finishing, wait (at most 120 s) until this file exists: a test "
                                           "holds the trainer running until it has seen what it needs")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--stdout-bytes", type=int, default=0)
    parser.add_argument("--spawn-child", action="store_true", help="start a grandchild that sleeps")
    parser.add_argument("--record-dir", help="write one file per execution here (exactly-once checks)")
    parser.add_argument("--artifacts", action="store_true", help="write a model, a checkpoint and metrics as the "
                                                                  "real trainer does")
    parser.add_argument("--evaluate", action="store_true", help="score answers as the real trainer does")
    parser.add_argument("--evals", type=int, default=0, help="eval passes, at steps 1..N, --eval-sleep apart")
    parser.add_argument("--eval-sleep", type=float, default=0.0)
    parser.add_argument("--worse-after-trial", type=int, default=0,
                        help="a sweep's trials numbered above this (their run is named '... #N') report eval "
                             "losses 10 higher")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="write a checkpoint every N steps, and resume from the newest one found at start")
    parser.add_argument("--model-bytes", type=int, default=4096, help="the exported model's size (--artifacts)")
    parser.add_argument("--hold-at-step", type=int, default=0,
                        help="on a fresh start (nothing to resume), wait after this step until --wait-for exists")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds each step takes")
    parser.add_argument("--eval-cap", type=int, default=5, help="score at most this many examples (--evaluate)")
    parser.add_argument("run_dir")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    config = json.loads((run_dir / RUN_CONFIG_FILE).read_text())
    examples = sum(1 for _ in (run_dir / DATASET_FILE).open())
    if args.record_dir:  # when it started, and the devices its worker handed it
        record = Path(args.record_dir) / f"{config['run_id']}.{os.getpid()}"
        record.write_text(json.dumps({"started": time.time(), "device_ids": os.environ.get(DEVICE_IDS_ENV),
                                      "host_devices": host_device_count(os.environ.get("XLA_FLAGS"))}))
    pids = [os.getpid()]
    if args.spawn_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        pids.append(child.pid)
    (run_dir / "pids.json").write_text(json.dumps(pids))

    print(f"fake trainer: {examples} examples, model {config['model_id']}", flush=True)
    base = Path(config["model_id"])
    if base.is_absolute() and base.is_dir():  # a checkpoint: say exactly which bytes it trains from
        for file in sorted(p for p in base.rglob("*") if p.is_file()):
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            print(f"fake trainer: base file {file.relative_to(base)} sha256 {digest}", flush=True)
    saved = sorted(int(p.name) for p in (run_dir / CHECKPOINTS_DIR).iterdir() if p.name.isdigit()) \
        if args.checkpoint_every and (run_dir / CHECKPOINTS_DIR).is_dir() else []
    resumed = saved[-1] if saved else 0
    if resumed:
        print(f"fake trainer: resuming from the checkpoint at step {resumed}", flush=True)
    emit("start", total_steps=args.steps, train_examples=examples, resumed_from_step=resumed)
    pace = 1.0 + config["learning_rate"] * 100 if args.evaluate else 1.0
    for step in range(resumed + 1, args.steps + 1):
        emit("step", step=step, loss=round(4.0 / (step * pace), 4), learning_rate=config["learning_rate"],
             tokens_per_second=1000.0, elapsed_seconds=0.01 * step)
        time.sleep(args.step_sleep)
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            write_checkpoint(run_dir, step)
        if step == args.hold_at_step and not resumed and args.wait_for:
            wait_for_file(args.wait_for)
    trial = int(config["name"].rsplit("#", 1)[1]) if "#" in (config.get("name") or "") else 0
    penalty = 10.0 if args.worse_after_trial and trial > args.worse_after_trial else 0.0
    for k in range(1, args.evals + 1):
        emit("eval", step=k, loss=4.5 / (k * pace) + penalty)
        time.sleep(args.eval_sleep)
    if args.steps and not args.evals:
        emit("eval", step=args.steps, loss=4.5 / (args.steps * pace))
    if args.stdout_bytes:
        line = "x" * 99 + "\n"
        sys.stdout.write(line * (args.stdout_bytes // 100))
        sys.stdout.flush()
    time.sleep(args.sleep)
    if args.wait_for and not args.hold_at_step:
        wait_for_file(args.wait_for)
    if args.exit_code:
        print(f"fake trainer: failing on purpose with code {args.exit_code}", file=sys.stderr, flush=True)
        sys.exit(args.exit_code)
    if args.artifacts:
        write_artifacts(run_dir, args.steps, args.model_bytes, config)
    final = round(4.0 / (max(args.steps, 1) * pace), 4)
    extra = {"evaluation": evaluate(run_dir, config, args.eval_cap),
             "final_eval_loss": 4.5 / (max(args.evals or args.steps, 1) * pace) + penalty} if args.evaluate else {}
    emit("end", steps=args.steps, final_loss=final, best_loss=final, tokens_per_second=1000.0, **extra)


if __name__ == "__main__":
    main()
