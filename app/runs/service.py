"""The run service: validates and creates runs, cancels and retries them, plans dry runs.

Status changes go through the named moves of `app.runs.lifecycle`; reads live in
`app.runs.queries`.
"""
from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import current_app

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import instruments
from app.config import instance_dir
from app.contract import training_plan
from app.datasets import store as dataset_store
from app.accounts.service import Actor
from app.artifacts.model_store import ModelStore
from app.artifacts.store import StoreError, StoreSettings, location_of
from app.errors import AppError, ConflictError, ForbiddenError, ValidationError, echo
from app.extensions import db
from app.models import WORKER_DEVICE_COUNT, TunixRun
from app import run_states as states
from app.contract import model_refs, prompt_format
from app.registry import gates as registry_gates, service as registry
from app.runs import artifacts, estimates, lifecycle, validation
from app.runs.channels import QUEUE_CHANNEL, notify
from app.run_states import ASYNC, CANCELLING, DRY_RUN, PENDING, REQUEUEABLE_MODES, RUNNING

log = logging.getLogger(__name__)


class IdempotencyConflict(ConflictError):
    """An Idempotency-Key was reused for a different submission."""

    def __init__(self, run: TunixRun):
        super().__init__("Idempotency-Key already used for a different submission",
                         {"Idempotency-Key": f"belongs to run {run.id}"})
        self.run = run


def model_roots(config) -> list[Path]:
    """Where local checkpoints may come from: TUNIX_MODEL_ROOTS, else instance/models and the artifacts root."""
    return [Path(p) for p in config["MODEL_ROOTS"]] if config.get("MODEL_ROOTS") else [
        instance_dir() / "models", Path(config["ARTIFACTS_ROOT"])]


def validate_submission(raw: dict[str, Any], mode: str | None = None) -> dict[str, Any]:
    """Full validated config, or ValidationError naming every bad field in one round: the fields, the
    datasets, and (for a run that trains) the steps the dataset gives."""
    try:
        return _checked_with_datasets(validation.validate_run_config(
            raw, model_roots=model_roots(current_app.config)), {}, mode)
    except validation.ConfigErrors as exc:
        _checked_with_datasets(exc.valid, exc.details, mode)
        raise


def _checked_with_datasets(config: dict[str, Any], problems: dict[str, str], mode: str | None) -> dict[str, Any]:
    """Add what the datasets say about `config` to `problems` (the fields already refused); raise if any."""
    datasets = {key: dataset_store.get_dataset(config[key]) for key in ("dataset_key", "eval_dataset_key")
                if config.get(key) and key not in problems}
    problems.update({key: f"unknown dataset {echo(config[key])}" for key, found in datasets.items() if found is None})
    if "model_id" not in problems and model_refs.is_model_ref(config.get("model_id") or ""):
        problems.update(_registry_model_problems(config))
    if "candidate_for" not in problems:
        problems.update({k: v for k, v in registry_gates.check_candidate(config).items() if k not in problems})
    training = datasets.get("dataset_key")
    if training is not None and mode in (states.SYNC, ASYNC):  # a dry run reports these in its plan
        problems.update({k: v for k, v in validation.steps_problems(config, training.num_examples).items()
                         if k not in problems})
    if mode == ASYNC and "devices" not in problems and isinstance(config.get("devices"), int):
        problems.update(_devices_problem(config["devices"]))
    if problems:
        raise ValidationError(validation.INVALID_CONFIG, problems)
    return config


def _registry_model_problems(config: dict[str, Any]) -> dict[str, str]:
    """A models:/ reference must name a version; what the version recorded of itself is checked as a local
    checkpoint's files would be (a chat template, heads a tp axis divides)."""
    try:
        facts = registry.resolve(config["model_id"]).version.facts or {}
    except ValidationError as exc:
        return exc.details
    problems = {}
    if config.get("prompt_format") == prompt_format.CHAT and not facts.get("chat_template"):
        problems["prompt_format"] = "chat cannot be used: this version carries no chat template; use plain"
    heads, kv_heads = facts.get("num_attention_heads"), facts.get("num_key_value_heads")
    tp = (config.get("mesh") or {}).get("tp", 1)
    if isinstance(heads, int) and isinstance(kv_heads, int) and (heads % tp or kv_heads % tp):
        problems["mesh"] = f"tp={tp} must divide the model's {heads} attention heads and its {kv_heads} key/value heads"
    return problems


def largest_worker() -> int | None:
    """The most devices any registered worker reported (stopped ones included); None before any registered."""
    return db.session.scalar(select(func.max(WORKER_DEVICE_COUNT)).where(WORKER_DEVICE_COUNT > 0))


def _devices_problem(devices: int) -> dict[str, str]:
    """A queued run no worker could ever take would wait forever: refuse it, while the fleet is known."""
    largest = largest_worker() if devices > 1 else None
    if largest is not None and devices > largest:
        return {"devices": f"must be at most {largest}: no worker has reported more devices than that"}
    return {}


def submit_run(raw: dict[str, Any], mode: str, idempotency_key: str | None = None,
               retry_of: uuid.UUID | None = None, created_by: int | None = None) -> tuple[TunixRun, bool]:
    """Validate and persist a run; returns (run, created). Does not execute it.

    async runs start pending (a worker claims them); sync and dry_run runs start
    running because the request itself carries them out.
    """
    if mode not in states.MODES:
        raise ValidationError("invalid mode", {"mode": f"must be one of {', '.join(states.MODES)}, got {echo(mode)}"})
    # Timed whole, as the caller waits for it: validation and the checks included, not only the INSERT.
    with instruments.timed_db_write("submit_run"):
        return _submit(raw, mode, idempotency_key, retry_of, created_by)


def _submit(raw: dict[str, Any], mode: str, idempotency_key: str | None, retry_of: uuid.UUID | None,
            created_by: int | None) -> tuple[TunixRun, bool]:
    config = validate_submission(raw, mode)
    if idempotency_key:
        existing = submitted_run(idempotency_key, created_by)
        if existing is not None:
            return _replay(existing, mode, config), False
    _check_limits(config, mode, created_by)

    values = _new_run(config, mode, created_by, retry_of=retry_of,
                      idempotency_key=_scoped_key(idempotency_key, created_by) if idempotency_key else None)
    stmt = pg_insert(TunixRun).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])
    with instruments.timed_db_write("create_run"):
        inserted = db.session.execute(stmt.returning(TunixRun.id)).scalar()
        if inserted is not None and mode == ASYNC:
            notify(db.session, QUEUE_CHANNEL, str(inserted))
        db.session.commit()
    if inserted is None:  # another request with the same key won the race
        return _replay(submitted_run(idempotency_key, created_by), mode, config), False
    run = db.session.get(TunixRun, inserted)
    log.info("run %s created mode=%s status=%s dataset=%s model=%s", run.id, mode, run.status,
             run.dataset_key, run.model_id)
    return run, True


def _new_run(config: dict[str, Any], mode: str, created_by: int | None, **extra: Any) -> dict[str, Any]:
    """The row of a new run: pending and queued for async, running in this process otherwise."""
    now = lifecycle.event_time()
    values = {
        "id": uuid.uuid4(), "mode": mode, "dataset_key": config["dataset_key"], "model_id": config["model_id"],
        "config": config, "devices": config.get("devices", 1), "created_at": now, "name": config["name"],
        "tags": config["tags"],
        "created_by": created_by, "artifacts_url": location_of(current_app.config),
        # Only a queued run can be re-queued; one carried out inside a request gets one start.
        "max_attempts": config["max_attempts"] if mode in REQUEUEABLE_MODES else 1, **extra,
    }
    if model_refs.is_model_ref(config["model_id"]):
        # Fixed now: the run trains from this version even if the alias moves before a worker claims it.
        version = registry.resolve(config["model_id"]).version
        values.update(model_version_id=version.id, model_digest=version.digest)
    if mode == ASYNC:
        values.update(status=PENDING, queued_at=now)
    else:
        values.update(status=RUNNING, started_at=now, heartbeat_at=now, attempt=1,
                      worker_id=f"web:{_process_label()}")
    return values


def queue_trial(raw: dict[str, Any], created_by: int | None, sweep_id: uuid.UUID, trial_number: int) -> uuid.UUID:
    """Queue a sweep's trial as an ordinary async run, inside the caller's transaction (not committed).

    The caller queues a trial only while `room_for_runs` says the user has room: the sweep waits
    for room rather than leave a hole where a refused trial would be.
    """
    config = validate_submission(raw)
    values = _new_run(config, ASYNC, created_by, sweep_id=sweep_id, trial_number=trial_number)
    with instruments.timed_db_write("create_run"):
        db.session.execute(pg_insert(TunixRun).values(**values))
        notify(db.session, QUEUE_CHANNEL, str(values["id"]))
    return values["id"]


class TooManyActiveRuns(AppError):
    """The user already has as many active runs as one user may."""

    status = 429


def room_for_runs(user_id: int | None) -> int:
    """How many more runs the user may have active, trials included. Takes the user's lock until the
    caller's transaction ends, so two submissions (or a submission and a sweep) cannot both take the
    last place."""
    cap = current_app.config["MAX_ACTIVE_RUNS_PER_USER"]
    if user_id is None or not cap:
        return 1_000_000
    db.session.execute(select(func.pg_advisory_xact_lock(func.hashtext("tunix_rt_user_runs"), user_id)))
    active = db.session.scalar(select(func.count()).select_from(TunixRun).where(
        TunixRun.created_by == user_id, TunixRun.status.in_(states.ACTIVE_STATUSES)))
    return max(0, cap - active)


def _check_sync_room(user_id: int | None, settings) -> None:
    """A sync run holds a web thread while it trains: only so many at once, for everyone and per user.
    The count and the insert that passes it run under one lock, held until the caller commits."""
    db.session.execute(select(func.pg_advisory_xact_lock(func.hashtext("tunix_rt_sync_runs"))))
    rows = db.session.execute(select(TunixRun.created_by, func.count()).where(
        TunixRun.mode == states.SYNC, TunixRun.status.in_((RUNNING, CANCELLING))).group_by(TunixRun.created_by)).all()
    everyone = sum(count for _, count in rows)
    mine = sum(count for owner, count in rows if owner == user_id)
    most, most_each = settings["MAX_SYNC_RUNS"], settings["MAX_SYNC_RUNS_PER_USER"]
    if most and everyone >= most:
        raise TooManyActiveRuns(f"{everyone} sync runs are under way, the most this service takes at once",
                                {"mode": f"at most {most} sync runs at once, for everyone: queue this one "
                                         "(async), or wait for one to end"})
    if most_each and mine >= most_each:
        raise TooManyActiveRuns(f"you have {mine} sync runs under way, the most one user may have",
                                {"mode": f"at most {most_each} sync runs of yours at once: queue this one "
                                         "(async), or wait for one to end"})


def _check_limits(config: dict[str, Any], mode: str, created_by: int | None) -> None:
    """Keep one request, or one user, from taking the service."""
    settings = current_app.config
    if mode == states.SYNC:
        estimate = estimates.estimate(config)
        if estimate.total_seconds > settings["SYNC_MAX_SECONDS"]:
            raise ValidationError("run too long for mode=sync", {"mode": (
                f"this run should take {estimate.explain()}: more than the {settings['SYNC_MAX_SECONDS']:.0f} s "
                "a sync run may take. Queue it instead (async)")})
    if mode == states.SYNC:
        _check_sync_room(created_by, settings)
    cap = settings["MAX_ACTIVE_RUNS_PER_USER"]
    if created_by is not None and cap and mode != DRY_RUN:
        active = cap - room_for_runs(created_by)
        if active >= cap:
            raise TooManyActiveRuns(f"you have {active} active runs, the most one user may have",
                                    {"runs": f"at most {cap} pending or running at once; wait for one to end "
                                             "or cancel one"})


def _replay(existing: TunixRun, mode: str, config: dict[str, Any]) -> TunixRun:
    if existing.mode != mode or existing.config != config:
        raise IdempotencyConflict(existing)
    return existing


def _scoped_key(key: str, created_by: int | None) -> str:
    # An Idempotency-Key is its sender's: the same key from two users names two runs.
    return f"{'-' if created_by is None else created_by}:{key}"


def submitted_run(key: str, created_by: int | None) -> TunixRun | None:
    """The run this user's submission with this idempotency key started, if it did (a key stored
    before keys were scoped per user still counts, for the user who sent it)."""
    return db.session.scalar(select(TunixRun).where(
        TunixRun.idempotency_key.in_([_scoped_key(key, created_by), key]),
        TunixRun.created_by.is_not_distinct_from(created_by)).order_by(TunixRun.created_at).limit(1))


def _process_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _check_may_change(run: TunixRun, actor: Actor, what: str) -> None:
    if not actor.may_change(run.created_by):
        raise ForbiddenError(f"only the run's owner or an admin may {what} it", {"run": "belongs to another user"})


def cancel_run(run: TunixRun, actor: Actor) -> TunixRun:
    """Cancel a run: pending ones at once, running ones through their worker. ConflictError when finished."""
    _check_may_change(run, actor, "cancel")
    for _ in range(3):  # the run may move under us (claimed, finished); look again
        if run.status == CANCELLING or lifecycle.cancel(run.id, run.status):
            break
        if states.is_terminal(run.status):
            raise ConflictError(f"run {run.id} is already {run.status}; only a pending or running run can be cancelled",
                                {"status": "is terminal"})
        refresh(run)
    return refresh(run)


def retry_run(run: TunixRun, actor: Actor) -> TunixRun:
    """A new run with the same config, linked to this one; only for a finished run.

    It is queued (async) whatever the original's mode, except that a dry run is planned again.
    """
    _check_may_change(run, actor, "retry")
    if not states.is_terminal(run.status):
        raise ConflictError(f"run {run.id} is {run.status}; only a finished run can be retried",
                            {"status": "is not terminal"})
    mode = DRY_RUN if run.mode == DRY_RUN else ASYNC
    config = dict(run.config)
    if run.model_version_id is not None:  # the same version the original trained from, wherever its alias went
        config["model_id"] = run.model_version.ref
    try:
        new_run, _ = submit_run(config, mode, retry_of=run.id, created_by=actor.user_id)
    except ValidationError as exc:
        raise ValidationError("the original config is no longer valid", exc.details) from None
    return new_run


def plan_dry_run(run: TunixRun, devices: list[dict] | None = None) -> bool:
    """Carry out a dry run: check the dataset and the config, store the plan (with the memory a step needs
    beside the `devices` live workers report), end the run."""
    examples = list(dataset_store.iter_examples(run.dataset_key))
    with tempfile.TemporaryDirectory(prefix="tunix-plan-") as folder:
        try:
            config = _planned_config(run, Path(folder))
            plan = training_plan.plan_run(config, examples, eval_dataset_examples=_eval_dataset_size(run.config),
                                          devices=devices)
        except training_plan.PlanError as exc:
            plan = {"ok": False, "problems": [str(exc)]}
    status = states.COMPLETED if plan["ok"] else states.FAILED
    error = None if plan["ok"] else "dry run found problems: " + "; ".join(plan["problems"])
    return lifecycle.finish(run.id, status, result=plan, error_message=error)


def _planned_config(run: TunixRun, folder: Path) -> dict[str, Any]:
    """The config a plan reads: a registered base is fetched into `folder` as far as a plan reads it (its
    config, tokenizer and the headers of its weights), and named by that path."""
    if run.model_version_id is None:
        return run.config
    version = run.model_version
    try:
        ModelStore(replace(StoreSettings.from_config(current_app.config), retry_seconds=artifacts.WEB_RETRY_SECONDS),
                   version.store_url).fetch_for_planning(version.files, folder)
    except StoreError as exc:
        raise training_plan.PlanError(f"model_id: {version.ref} could not be read from the store: {exc}") from None
    return {**run.config, "model_id": str(folder)}


def _eval_dataset_size(config: dict[str, Any]) -> int | None:
    dataset = dataset_store.get_dataset(config["eval_dataset_key"]) if config.get("eval_dataset_key") else None
    return None if dataset is None else dataset.num_examples


def plan_notes(run: TunixRun) -> list[str]:
    """What the run's settings will do that one may not expect (the plan's notes, for any run)."""
    config = run.config if isinstance(run.config, dict) else {}
    dataset = dataset_store.get_dataset(run.dataset_key)
    try:
        return training_plan.notes(config, dataset.num_examples, _eval_dataset_size(config)) if dataset else []
    except (KeyError, TypeError):  # a config stored before one of the settings existed
        return []


def rollback() -> None:
    """Drop whatever the session was in the middle of (after an error)."""
    db.session.rollback()


def refresh(run: TunixRun) -> TunixRun:
    db.session.refresh(run)
    return run
