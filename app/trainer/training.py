"""One training run with Tunix's PeftTrainer, reporting progress through the protocol."""
from __future__ import annotations

import json
import math
import os
import signal
import time
import traceback
from pathlib import Path

import jax
import numpy as np
import optax

from app.contract import device_mesh, model_catalog, progress_protocol, prompt_format, run_files, training_plan
from app.contract.text_tokenizers import load_tokenizer
from app.trainer import data as run_data
from app.trainer import device_layout, evaluation, hf_checkpoint, model_factory


def learning_rate_schedule(config: dict, total_steps: int) -> optax.Schedule:
    """Linear warmup to the peak rate, then constant, cosine or linear decay to the end."""
    peak, warmup = config["learning_rate"], min(config["warmup_steps"], max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    after = {
        "constant": optax.constant_schedule(peak),
        "cosine": optax.cosine_decay_schedule(peak, decay_steps),
        "linear": optax.linear_schedule(peak, 0.0, decay_steps),
    }[config["lr_schedule"]]
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _model_inputs(pad_id: int):
    from tunix.sft import utils

    def gen_model_input(x):
        pad_mask = x.input_tokens != pad_id
        return {"input_tokens": x.input_tokens, "input_mask": x.input_mask,
                "positions": utils.build_positions_from_mask(pad_mask),
                "attention_mask": utils.make_causal_attn_mask(pad_mask)}

    return gen_model_input


class ProgressHooks:
    """Tunix training hooks that print protocol events: steps, evals, checkpoints."""

    def __init__(self, train_batches: run_data.TrainBatches, total_steps: int, evaluates: bool):
        self.train_batches, self.total_steps, self.evaluates = train_batches, total_steps, evaluates
        self.train_start = None
        self.last_time = None
        self.first_step_at = None
        self.losses: list[float] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.step_times: list[float] = []
        self.step_tokens: list[int] = []
        self.last_checkpoint = None

    def on_train_start(self, trainer):
        self.train_start = self.last_time = time.monotonic()

    def on_train_end(self, trainer):
        pass

    def on_train_step_start(self, trainer):
        # Tunix evaluates every eval_every_n_steps; the last step is evaluated too, so the run's final
        # eval loss is the trained model's (an 18-step run with a cadence of 20 was scored untrained).
        if self.evaluates and trainer.train_steps + 1 == self.total_steps:
            trainer.config.eval_every_n_steps = self.total_steps

    def on_eval_step_start(self, trainer):
        pass

    def on_train_step_end(self, trainer, step: int, loss) -> None:
        # Tunix reports a step one step late, 1-based; the gap between calls is a step's time.
        now = time.monotonic()
        if self.first_step_at is None:
            self.first_step_at = now
        elapsed_step, self.last_time = now - self.last_time, now
        loss = float(loss)
        tokens = self.train_batches.tokens_per_batch[step - 1] if step <= len(
            self.train_batches.tokens_per_batch) else 0
        self.losses.append(loss)
        self.step_times.append(elapsed_step)
        self.step_tokens.append(tokens)
        lr = _latest(trainer, "learning_rate", "train")
        progress_protocol.emit("step", step=step, loss=_finite(loss), learning_rate=_finite(lr),
                               tokens_per_second=round(tokens / elapsed_step, 1) if elapsed_step > 0 else None,
                               elapsed_seconds=round(now - self.train_start, 3))
        self._report_checkpoint(trainer)

    def on_eval_step_end(self, trainer, eval_loss) -> None:
        loss = float(_latest(trainer, "loss", "eval"))
        self.eval_losses.append((trainer.train_steps, loss))
        progress_protocol.emit("eval", step=trainer.train_steps, loss=_finite(loss))

    def _report_checkpoint(self, trainer) -> None:
        latest = trainer.checkpoint_manager.latest_step()
        if latest is not None and latest != self.last_checkpoint:
            self.last_checkpoint = latest
            progress_protocol.emit("checkpoint", step=int(latest), path=run_files.CHECKPOINTS_DIR)


def _latest(trainer, name: str, mode: str):
    """The last logged value of a metric (Tunix's get_metric would average its whole history)."""
    if not trainer.metrics_logger.metric_exists("", name, mode):
        return None
    return trainer.metrics_logger.get_metric_history("", name, mode)[-1]


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _steady(values: list[float]) -> list[float]:
    # The first step includes tracing and compilation; leave it out of throughput.
    return values[1:] if len(values) > 1 else values


def train(run_dir: Path, config: dict, started: float | None = None) -> dict:
    """Fine-tune as the run's config says; write artifacts into run_dir; return the summary.

    `started` is the monotonic time the process began, for time-to-first-step.
    """
    started = time.monotonic() if started is None else started
    from orbax import checkpoint as ocp
    from tunix.sft import metrics_logger, peft_trainer

    tokenizer = load_tokenizer(config["model_id"])
    examples = run_data.read_examples(run_dir / run_files.DATASET_FILE)
    if not examples:
        raise ValueError("the dataset export holds no examples")
    encoded = run_data.encode(examples, tokenizer, config["max_seq_length"], prompt_format.format_for(config))
    train_idx, eval_idx = training_plan.split_indices(len(examples), config["eval_fraction"], config["seed"])
    total_steps = training_plan.total_steps(config, len(train_idx))
    if total_steps == 0:
        raise ValueError(f"batch_size {config['batch_size']} is larger than the {len(train_idx)} training examples")
    train_batches = run_data.TrainBatches(encoded, train_idx, config["batch_size"], config["num_epochs"],
                                          config["seed"], tokenizer.pad_id)
    eval_batches = run_data.EvalBatches(encoded, eval_idx, config["batch_size"],
                                        device_mesh.run_mesh(config)["fsdp"])

    # Every array from here on lives on the run's mesh; Tunix shards batches and optimizer state inside it.
    mesh = device_layout.build_mesh(config)
    with mesh:
        model = model_factory.build_model(config, tokenizer.vocab_size)
        device_layout.shard_model(model, mesh)
        total_params, trainable_params = model_factory.count_parameters(model)
        optimizer = optax.inject_hyperparams(optax.adamw)(
            learning_rate=learning_rate_schedule(config, total_steps), weight_decay=config["weight_decay"])
        training_config = peft_trainer.TrainingConfig(
            eval_every_n_steps=config["eval_every_n_steps"], max_steps=total_steps,
            checkpoint_root_directory=str(run_dir / run_files.CHECKPOINTS_DIR),
            checkpointing_options=ocp.CheckpointManagerOptions(
                save_interval_steps=config["checkpoint_every_n_steps"], max_to_keep=2),
            metrics_logging_options=metrics_logger.MetricsLoggerOptions(log_dir=str(run_dir / "tensorboard")),
            pbar_description=None)
        trainer = _trainer_resuming_if_possible(peft_trainer, model, optimizer, training_config,
                                                run_dir / run_files.CHECKPOINTS_DIR)
        trainer = trainer.with_gen_model_input_fn(_model_inputs(tokenizer.pad_id))
        hooks = ProgressHooks(train_batches, total_steps, evaluates=len(eval_batches) > 0)
        trainer.with_training_hooks(hooks)
        _stop_on_sigterm(train_batches)
        resumed_from = trainer.train_steps

        progress_protocol.emit(
            "start", total_steps=total_steps, steps_per_epoch=training_plan.steps_per_epoch(len(train_idx),
                                                                                            config["batch_size"]),
            num_epochs=config["num_epochs"], train_examples=len(train_idx), eval_examples=len(eval_idx),
            examples_truncated=encoded.truncated, parameters=total_params, trainable_parameters=trainable_params,
            resumed_from_step=resumed_from, device=str(jax.devices()[0].platform),
            mesh=device_mesh.run_mesh(config))
        print(f"training {config['model_id']} ({config['finetune']}, {trainable_params:,} of {total_params:,} "
              f"parameters trainable) for {total_steps} steps on {len(train_idx)} examples", flush=True)

        scoring = _Scoring(run_dir, config, examples, eval_idx, tokenizer, model)
        if resumed_from:
            scoring.restore_before()
        else:
            scoring.run(trainer.model, "before")
            scoring.save_before()

        progress_protocol.emit("phase", name=progress_protocol.TRAINING)
        trainer.train(train_batches, eval_batches if len(eval_batches) else None)
        if hooks.last_checkpoint != trainer.checkpoint_manager.latest_step():
            hooks._report_checkpoint(trainer)

        summary = _summary(hooks, trainer, total_steps, started)
        summary["stopped_early"] = train_batches.stop.is_set()
        if not summary["stopped_early"]:  # a cancelled or timed-out run is not scored
            scoring.run(trainer.model, "after")
        summary["evaluation"] = scoring.outcome()
        progress_protocol.emit("phase", name=progress_protocol.STORING)
        if not summary["stopped_early"]:
            source = None if config["model_id"] in model_catalog.PRESETS else Path(config["model_id"])
            hf_checkpoint.export(trainer.model, tokenizer, run_dir / run_files.MODEL_DIR, source, config)
            summary["exported_model"] = run_files.MODEL_DIR
            if hf_checkpoint.export_adapter(trainer.model, run_dir / run_files.ADAPTER_DIR, source, config):
                summary["exported_adapter"] = run_files.ADAPTER_DIR
        summary["layout"] = device_layout.layout_report(trainer.model, mesh)  # after all: the memory peaks are whole
        _write_json(run_dir / run_files.SUMMARY_FILE, summary)
        _write_json(run_dir / run_files.METRICS_FILE,
                    {"train": [{"step": i + 1, "loss": l} for i, l in enumerate(hooks.losses)],
                     "eval": [{"step": s, "loss": l} for s, l in hooks.eval_losses]})
        progress_protocol.emit("end", **summary)
        print(f"done: {summary['steps']} steps, final loss {summary['final_loss']}, "
              f"{summary['tokens_per_second']} tokens/s", flush=True)
        return summary


class _Scoring:
    """The run's evaluation, whose failure is reported and never fails the training."""

    def __init__(self, run_dir: Path, config: dict, examples, eval_idx, tokenizer, model):
        self.run_dir = run_dir
        self.passes: dict[str, dict | None] = {"before": None, "after": None}
        self.error: str | None = None
        self.evaluator = None
        self.eval_set = evaluation.eval_set_for(run_dir, config, examples, eval_idx)
        if self.eval_set is None:
            self.skipped = ("eval_max_examples is 0" if config["eval_max_examples"] == 0 else
                            "no examples to score: set eval_fraction above 0 or name an eval_dataset_key")
            return
        self.skipped = None
        try:
            self.evaluator = evaluation.Evaluator(self.eval_set, tokenizer, model.config, config, run_dir)
        except Exception as exc:
            self._failed("before", exc)

    def _failed(self, phase: str, exc: Exception) -> None:
        traceback.print_exc()
        self.error = f"evaluation failed {phase} training: {type(exc).__name__}: {str(exc)[:500]}"
        print(f"trainer: {self.error}; training goes on without it", flush=True)
        self.evaluator = None

    def run(self, model, phase: str) -> None:
        if self.evaluator is None:
            return
        progress_protocol.emit("phase", name=progress_protocol.SCORING_BEFORE if phase == "before"
                               else progress_protocol.SCORING_AFTER)
        try:
            self.passes[phase] = self.evaluator.run(model, phase)
        except Exception as exc:
            self._failed(phase, exc)

    def save_before(self) -> None:
        if self.passes["before"] is not None:
            evaluation.save_before(self.run_dir, self.passes["before"])

    def restore_before(self) -> None:
        self.passes["before"] = evaluation.load_before(self.run_dir)

    def outcome(self) -> dict | None:
        if self.eval_set is None:
            return {"skipped": self.skipped}
        return {**self.passes, "examples": len(self.eval_set.examples), "dataset_key": self.eval_set.dataset_key,
                "source": self.eval_set.source, "error": self.error}


class CheckpointError(RuntimeError):
    """A saved checkpoint could not be read back."""


def _trainer_resuming_if_possible(peft_trainer, model, optimizer, training_config, checkpoints: Path):
    # Tunix restores the latest checkpoint while it builds the trainer. A corrupt or foreign
    # checkpoint then fails with whatever the reader hit (seen: a bare MemoryError), which reads
    # like the host ran out of memory: say which checkpoint it was and what to do instead.
    saved = sorted((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()), reverse=True) \
        if checkpoints.is_dir() else []
    try:
        return peft_trainer.PeftTrainer(model, optimizer, training_config)
    except Exception as exc:
        if not saved:
            raise
        raise CheckpointError(
            f"could not read the checkpoint saved at step {saved[0]} ({run_files.CHECKPOINTS_DIR}/{saved[0]}: "
            f"{type(exc).__name__}: {str(exc)[:300]}); it may be damaged or come from another model or config. "
            f"Delete that folder to resume from an earlier one, or start a new run") from exc


def _stop_on_sigterm(train_batches: run_data.TrainBatches) -> None:
    # The platform sends SIGTERM to cancel, time out or hand a run back, then waits its
    # grace period: stop feeding batches so Tunix saves a final checkpoint and returns.
    def stop(signum, _frame):
        print(f"trainer: {signal.Signals(signum).name} received; stopping after this step and saving a checkpoint",
              flush=True)
        train_batches.stop.set()

    signal.signal(signal.SIGTERM, stop)


def _summary(hooks: ProgressHooks, trainer, total_steps: int, started: float) -> dict:
    times, tokens = _steady(hooks.step_times), _steady(hooks.step_tokens)
    train_seconds = sum(times)
    return {
        "steps": trainer.train_steps, "total_steps": total_steps,
        "final_loss": _finite(hooks.losses[-1]) if hooks.losses else None,
        "first_loss": _finite(hooks.losses[0]) if hooks.losses else None,
        "best_loss": _finite(min(hooks.losses)) if hooks.losses else None,
        "final_eval_loss": hooks.eval_losses[-1][1] if hooks.eval_losses else None,
        "final_eval_step": hooks.eval_losses[-1][0] if hooks.eval_losses else None,
        "best_eval_loss": min(l for _, l in hooks.eval_losses) if hooks.eval_losses else None,
        "tokens_per_second": round(sum(tokens) / train_seconds, 1) if train_seconds > 0 else None,
        "steps_per_second": round(len(times) / train_seconds, 2) if train_seconds > 0 else None,
        "time_to_first_step_seconds": round(hooks.first_step_at - started, 3) if hooks.first_step_at else None,
        "train_seconds": round(time.monotonic() - hooks.train_start, 3) if hooks.train_start else None,
        "checkpoint_step": trainer.checkpoint_manager.latest_step(),
        "device": str(jax.devices()[0].platform), "pid": os.getpid(),
    }


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
