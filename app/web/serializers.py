"""Every JSON shape the API returns, built in this one place from rows already read (no queries here)."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from app.artifacts.store import shown_location
from app.models import (AliasMove, Dataset, GateVerdict, ModelAlias, ModelGate, ModelVersion, RegisteredModel,
                        RunPrediction, Sweep, SweepTrial, TunixRun)
from app.queue.registry import WorkerView
from app.registry.gates import candidate_for


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def run_status(run: TunixRun) -> dict[str, Any]:
    """The small payload of GET /api/tunix/runs/<id>/status."""
    return {
        "run_id": str(run.id), "status": run.status,
        "queued_at": _iso(run.queued_at), "started_at": _iso(run.started_at),
        "completed_at": _iso(run.completed_at), "exit_code": run.exit_code,
    }


def run_summary(run: TunixRun) -> dict[str, Any]:
    """One run as the list endpoint shows it: no config, outputs or links."""
    return {
        **run_status(run),
        "name": run.name, "tags": list(run.tags or []), "created_by": run.creator.username if run.creator else None,
        "mode": run.mode, "dataset_key": run.dataset_key, "model_id": run.model_id,
        "created_at": _iso(run.created_at), "duration_seconds": run.duration_seconds,
        "error_message": run.error_message, **scores(run),
    }


def scores(run: TunixRun) -> dict[str, Any]:
    """The figures a run is ranked by, copied from its result when it ended."""
    return {"final_loss": run.final_loss, "final_eval_loss": run.final_eval_loss,
            "answer_match": run.answer_match, "exact_match": run.exact_match, "evaluated_on": run.evaluated_on}


def prediction(row: RunPrediction) -> dict[str, Any]:
    """One scored answer."""
    return {"index": row.position, "prompt": row.prompt, "reference": row.reference, "prediction": row.prediction,
            "exact_match": row.exact_match, "answer_match": row.answer_match,
            "generated_tokens": row.generated_tokens}


def leaderboard_entry(rank: int, run: TunixRun) -> dict[str, Any]:
    """One line of a dataset's leaderboard."""
    config = run.config if isinstance(run.config, dict) else {}
    return {"rank": rank, "run_id": str(run.id), "name": run.name, "model_id": run.model_id,
            "finetune": config.get("finetune"), "dataset_key": run.dataset_key,
            "hyperparameters": {k: config.get(k) for k in KEY_HYPERPARAMETERS},
            "created_by": run.creator.username if run.creator else None, "completed_at": _iso(run.completed_at),
            **scores(run)}


KEY_HYPERPARAMETERS = ("learning_rate", "num_epochs", "max_steps", "batch_size", "lora_rank")


def run_detail(run: TunixRun, retries: list[uuid.UUID]) -> dict[str, Any]:
    """The whole run, as the API returns it; `retries` are the runs started as its retries."""
    return {
        **run_summary(run),
        "config": run.config, "worker_id": run.worker_id,
        "stdout_tail": run.stdout_tail, "stderr_tail": run.stderr_tail,
        "result": run.result, "progress": run.progress,
        "attempt": run.attempt, "max_attempts": run.max_attempts, "recoveries": run.recoveries,
        "heartbeat_at": _iso(run.heartbeat_at), "cancel_requested_at": _iso(run.cancel_requested_at),
        "retry_of": str(run.retry_of) if run.retry_of else None,
        "retries": [str(r) for r in retries], "devices": run.devices,
        "device_ids": list(run.device_ids) if run.device_ids is not None else None,
        # A bucket's address; a local folder of the server's is not shown.
        "artifacts_url": shown_location(run.artifacts_url),
        # A models:/ base: the version it resolved to at submission, and that version's digest.
        "model_version": run.model_version.ref if run.model_version_id is not None else None,
        "model_digest": run.model_digest,
        "candidate_for": candidate_for(run),
    }


def dataset(row: Dataset) -> dict[str, Any]:
    """A dataset's facts, without its examples."""
    return {
        "key": row.key, "name": row.name, "version": row.version,
        "description": row.description, "num_examples": row.num_examples,
        "size_bytes": row.size_bytes, "stats": row.stats,
        "created_by": row.creator.username if row.creator else None,
        "created_at": row.created_at.isoformat(),
    }


def worker(view: WorkerView) -> dict[str, Any]:
    """A registered worker, with whether it heartbeated recently, its devices and the runs on them."""
    row = view.row
    return {
        "id": row.id, "host": row.host, "pid": row.pid, "state": row.state, "started_at": _iso(row.started_at),
        "last_seen_at": _iso(row.last_seen_at),
        "current_run_id": str(row.current_run_id) if row.current_run_id else None,
        "runs_done": row.runs_done, "alive": view.alive, "devices": row.devices or [],
        "versions": row.versions or {}, "running": view.running,
        "free_device_ids": view.free_device_ids, "busy_device_ids": view.busy_device_ids,
        "playground": row.playground,
    }


def sweep_summary(sweep: Sweep) -> dict[str, Any]:
    """A sweep without its trials."""
    return {
        "sweep_id": str(sweep.id), "name": sweep.name, "status": sweep.status,
        "objective": {"metric": sweep.objective_metric, "direction": sweep.direction},
        "max_trials": sweep.max_trials, "parallelism": sweep.parallelism, "sampler": sweep.sampler,
        "pruner": sweep.pruner, "trials_asked": sweep.trials_asked, "best_trial_number": sweep.best_trial_number,
        "best_value": sweep.best_value, "error_message": sweep.error_message,
        "created_by": sweep.creator.username if sweep.creator else None, "created_at": _iso(sweep.created_at),
        "completed_at": _iso(sweep.completed_at),
    }


def sweep_trial(trial: SweepTrial) -> dict[str, Any]:
    """One trial: its parameters, where it stands, its objective and its run."""
    return {"number": trial.number, "state": trial.state, "params": trial.params, "value": trial.value,
            "note": trial.note, "pruned_at_step": trial.pruned_at_step,
            "run_id": str(trial.run_id) if trial.run_id else None,
            "run_status": trial.run.status if trial.run is not None else None,
            "asked_at": _iso(trial.asked_at), "told_at": _iso(trial.told_at)}


def sweep_detail(sweep: Sweep, trials: list[SweepTrial]) -> dict[str, Any]:
    """The whole sweep: its spec, its trials and its best trial."""
    best = next((t for t in trials if t.number == sweep.best_trial_number), None)
    return {**sweep_summary(sweep), "base": sweep.base, "space": sweep.space,
            "best": sweep_trial(best) if best else None, "trials": [sweep_trial(t) for t in trials]}


def registered_model(model: RegisteredModel, versions: int, aliases: list[ModelAlias]) -> dict[str, Any]:
    """A registered model without its versions."""
    return {"name": model.name, "description": model.description,
            "owner": model.owner.username if model.owner else None, "created_at": _iso(model.created_at),
            "versions": versions, "aliases": {row.alias: row.version.number for row in aliases}}


def model_version(version: ModelVersion) -> dict[str, Any]:
    """One immutable version: its files, digest, lineage and scores."""
    return {"name": version.model.name, "version": version.number, "ref": version.ref, "digest": version.digest,
            "size_bytes": version.size_bytes, "files": version.files,
            "source_run_id": str(version.source_run_id) if version.source_run_id else None,
            "lineage": version.lineage, "scores": version.scores,
            "created_by": version.creator.username if version.creator else None,
            "created_at": _iso(version.created_at), "archived_at": _iso(version.archived_at)}


def model_alias(row: ModelAlias) -> dict[str, Any]:
    return {"alias": row.alias, "version": row.version.number, "protected": row.protected,
            "updated_at": _iso(row.updated_at)}


def alias_move(move: AliasMove) -> dict[str, Any]:
    """One move of an alias, as its history keeps it."""
    return {"alias": move.alias, "from_version": move.from_number, "to_version": move.to_number,
            "moved_by": move.moved_by_name, "moved_at": _iso(move.moved_at), "reason": move.reason,
            "override": move.override}


def model_gate(gate: ModelGate, description: str) -> dict[str, Any]:
    return {"id": gate.id, "metric": gate.metric, "direction": gate.direction,
            "eval_dataset_key": gate.eval_dataset_key, "floor": gate.floor, "max_drop": gate.max_drop,
            "drop_kind": gate.drop_kind, "baseline_alias": gate.baseline_alias, "confidence_z": gate.confidence_z,
            "description": description}


def gate_verdict(verdict: GateVerdict) -> dict[str, Any]:
    """What one gate said of a candidate, with the numbers."""
    return {"gate_id": verdict.gate_id, "metric": verdict.metric, "passed": verdict.passed,
            "candidate_value": verdict.candidate_value, "baseline_version": verdict.baseline_number,
            "baseline_value": verdict.baseline_value, "delta": verdict.delta, "allowance": verdict.allowance,
            "reason": verdict.reason, "judged_at": _iso(verdict.judged_at)}


def generation_request(row, wait=None) -> dict[str, Any]:
    """A playground request: the model asked, the prompts and settings, the answers so far and its state."""
    return {
        "id": str(row.id), "group_id": str(row.group_id) if row.group_id else None, "model": row.model,
        "model_key": row.model_key, "status": row.status, "phase": row.phase, "prompts": list(row.prompts),
        "settings": dict(row.settings), "answers": list(row.answers or []),
        "created_by": row.creator.username if row.creator else None, "created_at": _iso(row.created_at),
        "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at), "attempt": row.attempt,
        "cold": row.cold, "load_seconds": row.load_seconds, "error_message": row.error_message,
        "cancel_requested": row.cancel_requested_at is not None,
        "wait": None if wait is None else {"requests_ahead": wait.ahead, "runs_ahead": wait.runs_ahead,
                                           "workers": wait.workers},
    }
