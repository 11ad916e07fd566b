"""Each family's test checkpoint trained through Tunix RT, beside the same steps run with Tunix directly.

For every family (Gemma 3, Llama 3, Qwen 2 / 2.5, Qwen 3) a tiny random checkpoint in the Hugging Face
layout (tests/checkpoints.py) is trained full-weight and with LoRA: once through the platform (an
async run that a live worker.py carries out, with evaluation off) and once by a child process that
calls Tunix alone, as its own examples do: the family's safetensors loader, qwix for LoRA, optax's
AdamW on the same cosine schedule, Tunix's PeftTrainer logging its metrics to TensorBoard as the
platform's trainer has it do (about 1 ms a step here: on these tiny models, 8 % of a step), on
batches of the same shape (batch 4, 128 tokens). Both report their
steady steps/s (the first step, which compiles, left out); tokens/s counts the same real tokens per
step on both sides, so its ratio is the steps/s ratio. The two sides alternate, `--repeats` times, and
the medians are compared: on two shared cores one run can be 20 % faster than the next.

    .venv/bin/python bench/model_families.py [--steps 100] [--repeats 3] [--families qwen3 llama ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
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
from tests.checkpoints import FAMILIES, write_tiny_checkpoint  # noqa: E402

TRAINER = [sys.executable, "-m", "app.trainer"]
BATCH, LENGTH, RANK, ALPHA, LEARNING_RATE = 4, 128, 8, 16.0, 1e-3


def direct_child(checkpoint: str, finetune: str, steps: int) -> dict:
    """Train with Tunix alone: no run directory, no protocol, no platform. Steady steps/s after step 1."""
    import numpy as np
    import optax
    import qwix
    from flax import nnx
    from tunix.sft import metrics_logger, peft_trainer, utils

    from app.trainer import families

    family = families.family_of(Path(checkpoint))
    model = family.params().create_model_from_safe_tensors(checkpoint, families.model_config(Path(checkpoint)))
    if finetune == "lora":
        provider = qwix.LoraProvider(module_path=family.lora_targets, rank=RANK, alpha=ALPHA)
        model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(2), **model.get_model_input())
    optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=optax.cosine_decay_schedule(LEARNING_RATE, steps),
                                                      weight_decay=0.0)
    logs = tempfile.mkdtemp(prefix="tunix-direct-")
    trainer = peft_trainer.PeftTrainer(model, optimizer, peft_trainer.TrainingConfig(
        eval_every_n_steps=10 ** 9, max_steps=steps, pbar_description=None,
        metrics_logging_options=metrics_logger.MetricsLoggerOptions(log_dir=logs)))

    def inputs(x):
        pad = x.input_tokens != 0
        return {"input_tokens": x.input_tokens, "input_mask": x.input_mask,
                "positions": utils.build_positions_from_mask(pad), "attention_mask": utils.make_causal_attn_mask(pad)}

    trainer = trainer.with_gen_model_input_fn(inputs)
    ends: list[float] = []

    class Clock:  # Tunix's hooks: the moment each step ends, measured as the platform's trainer measures it
        def on_train_start(self, trainer): pass
        def on_train_end(self, trainer): pass
        def on_train_step_start(self, trainer): pass
        def on_eval_step_start(self, trainer): pass
        def on_eval_step_end(self, trainer, eval_loss): pass

        def on_train_step_end(self, trainer, step, loss):
            float(loss)  # the loss of the step, as the platform reads it
            ends.append(time.monotonic())

    trainer.with_training_hooks(Clock())
    rng = np.random.default_rng(0)

    def batches():
        for _ in range(steps):
            tokens = rng.integers(3, 259, size=(BATCH, LENGTH), dtype=np.int32)
            mask = np.ones((BATCH, LENGTH), np.int32)
            mask[:, : LENGTH // 2] = 0  # the loss on the response half, as a run's examples have it
            yield peft_trainer.TrainingInput(input_tokens=tokens, input_mask=mask)

    trainer.train(batches())
    # The first step traces and compiles: the steady pace is from its end to the last step's.
    return {"steps_per_second": round((len(ends) - 1) / (ends[-1] - ends[0]), 2)}


def through_platform(client, body: dict) -> dict:
    run_id = client.post("/api/tunix/run?mode=async", json=body).get_json()["run_id"]
    while (status := client.get(f"/api/tunix/runs/{run_id}/status").get_json()["status"]) in ("pending", "running"):
        time.sleep(0.2)
    run = client.get(f"/api/tunix/runs/{run_id}").get_json()
    if status != "completed":
        raise SystemExit(f"run {run_id} ended {status}: {run['error_message']}\n{run['stderr_tail']}")
    return {key: run["result"][key] for key in ("steps_per_second", "tokens_per_second")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--child", nargs=3, metavar=("CHECKPOINT", "FINETUNE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(direct_child(args.child[0], args.child[1], int(args.child[2]))))
        return

    rows = []
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        models, artifacts = Path(tmp) / "models", Path(tmp) / "artifacts"
        os.environ.update(DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(artifacts), TUNIX_INSTANCE_DIR=tmp,
                          TUNIX_MODEL_ROOTS=str(models))
        from app import create_app
        from app.accounts import service as accounts
        from app.datasets.sample import SAMPLE_KEY

        app = create_app({"DATABASE_URL": url, "ARTIFACTS_ROOT": str(artifacts), "TRAIN_COMMAND": TRAINER})
        worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL,
                                  env=dict(os.environ, TUNIX_TRAIN_COMMAND=shlex.join(TRAINER),
                                           TUNIX_WORKER_POLL_SECONDS="0.05"))
        try:
            with app.app_context():
                client = app.test_client()
                user, _ = accounts.create_user("bench", admin=True)
                client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {accounts.create_token(user, 'bench')[1]}"
                for family in args.families:
                    checkpoint = write_tiny_checkpoint(models / family, family)
                    for finetune in ("full", "lora"):
                        body = {"dataset_key": SAMPLE_KEY, "model_id": str(checkpoint), "finetune": finetune,
                                "max_steps": args.steps, "num_epochs": 100, "batch_size": BATCH,
                                "max_seq_length": LENGTH, "learning_rate": LEARNING_RATE, "lora_rank": RANK,
                                "lora_alpha": ALPHA, "eval_fraction": 0, "checkpoint_every_n_steps": 10 ** 6}
                        platforms, directs = [], []
                        for _ in range(args.repeats):  # alternating, so the machine's drift hits both alike
                            platforms.append(through_platform(client, body))
                            out = subprocess.run([sys.executable, __file__, "--child", str(checkpoint), finetune,
                                                  str(args.steps)], cwd=ROOT, check=True, capture_output=True,
                                                 text=True).stdout
                            directs.append(json.loads(out.strip().splitlines()[-1]))
                        platform = {key: statistics.median(p[key] for p in platforms)
                                    for key in ("steps_per_second", "tokens_per_second")}
                        direct = statistics.median(d["steps_per_second"] for d in directs)
                        tokens_per_step = platform["tokens_per_second"] / platform["steps_per_second"]
                        rows.append({"family": family, "finetune": finetune, "tunix_rt": platform,
                                     "tunix_direct": {"steps_per_second": direct,
                                                      "tokens_per_second": round(direct * tokens_per_step, 1)},
                                     "ratio": round(platform["steps_per_second"] / direct, 3),
                                     "runs": {"tunix_rt": platforms, "tunix_direct": directs}})
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)

    print(f"Tiny test checkpoints, {args.steps} steps, batch {BATCH} x {LENGTH} tokens, medians of {args.repeats}, "
          f"CPU: {os.cpu_count()} cores")
    print(f"{'family':<14}{'mode':<6}{'steps/s RT':>12}{'direct':>9}{'tokens/s RT':>13}{'direct':>10}{'ratio':>8}")
    for r in rows:
        rt, direct = r["tunix_rt"], r["tunix_direct"]
        print(f"{r['family']:<14}{r['finetune']:<6}{rt['steps_per_second']:>12.1f}{direct['steps_per_second']:>9.1f}"
              f"{rt['tokens_per_second']:>13,.0f}{direct['tokens_per_second']:>10,.0f}{r['ratio']:>8.3f}")
    write_results("model_families", {"steps": args.steps, "repeats": args.repeats, "cpus": os.cpu_count(),
                                     "rows": rows})


if __name__ == "__main__":
    main()
