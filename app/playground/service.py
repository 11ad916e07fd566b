"""Asking models in the playground: which model a name means, the bounds, the per-user limit, cancel, the
wait a request is in, and a model's history. Workers answer (app.worker.playground)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from sqlalchemy import func, select, update

from app.accounts.service import Actor
from app.contract import generation, model_catalog, model_refs
from app.contract.generation import CANCELLED, FAILED, PENDING, RUNNING
from app.errors import ConflictError, ForbiddenError, NotFoundError, TooManyRequests, ValidationError, echo
from app.extensions import db
from app.models import GenerationRequest, ModelVersion, TunixRun, Worker
from app.registry import service as registry
from app.runs.channels import CANCEL_CHANNEL, QUEUE_CHANNEL, notify

MAX_MODELS = 3  # side by side on the page
DEFAULT_MAX_PROMPT_TOKENS = 128  # a preset's or a checkpoint's prompts keep their last 128 tokens, as a run's default
PAYLOAD_PREFIX = "generate:"  # on the queue and cancel channels: a request, not a run


@dataclass(frozen=True)
class Settings:
    """The playground's limits, from the app config."""

    max_waiting: int  # requests one user may have waiting at once (429 beyond)
    wait_seconds: float  # a request nobody took in this long fails, and says why

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Settings":
        return cls(int(config["PLAYGROUND_MAX_WAITING"]), float(config["PLAYGROUND_WAIT_SECONDS"]))


@dataclass(frozen=True)
class Target:
    """A model as a request names it and as a worker builds it."""

    model: str
    key: str
    spec: dict[str, Any]
    run_id: uuid.UUID | None = None
    version_id: int | None = None
    label: str = ""


def _prompting(config: Mapping[str, Any]) -> dict[str, Any]:
    return {"prompt_format": config.get("prompt_format", "plain"),
            "max_prompt_tokens": int(config.get("max_seq_length") or DEFAULT_MAX_PROMPT_TOKENS)}


def _run_target(model: str) -> Target:
    run_id = model[len(generation.RUNS_PREFIX):].strip("/")
    try:
        run = db.session.get(TunixRun, uuid.UUID(run_id))
    except ValueError:
        run = None
    if run is None:
        raise ValidationError("unknown model", {"model": f"no run with id {echo(run_id)}"})
    if not (run.status == "completed" and (run.result or {}).get("exported_model")):
        raise ValidationError("no model to ask", {"model": f"run {str(run.id)[:8]} exported no model (it is "
                                                           f"{run.status}{', a dry run' if run.is_plan else ''})"})
    return Target(model, key_of_run(run), {"source": "run", "run_id": str(run.id), "location": run.artifacts_url,
                                           **_prompting(run.config)}, run_id=run.id, label=run.title)


def _version_target(model: str) -> Target:
    try:
        resolved = registry.resolve(model)
    except ValidationError as exc:
        raise ValidationError(exc.message, {"model": exc.details.get("model_id", exc.message)}) from None
    version = resolved.version
    return Target(model, key_of_version(version), {
        "source": "version", "ref": version.ref, "digest": version.digest, "files": version.files,
        "store_url": version.store_url, "size_bytes": version.size_bytes,
        **_prompting((version.lineage or {}).get("config") or {})}, version_id=version.id, label=version.ref)


def target_of(model: Any, model_roots: Sequence[Path]) -> Target:
    """What a request's `model` names: a preset, runs:/<id>, models:/<name>@<alias> or /<version>, or a
    checkpoint folder. ValidationError on `model` otherwise."""
    if not isinstance(model, str) or not model.strip():
        raise ValidationError("invalid model", {"model": "is required: a preset, runs:/<run id>, "
                                                         "models:/<name>@<alias> or a checkpoint folder"})
    model = model.strip()
    if len(model) > 512:
        raise ValidationError("invalid model", {"model": "must be at most 512 characters"})
    if generation.is_run_ref(model):
        return _run_target(model)
    if model_refs.is_model_ref(model):
        return _version_target(model)
    problem = model_catalog.check_model_id(model, model_roots)
    if problem:
        raise ValidationError("invalid model", {"model": problem})
    if model in model_catalog.PRESETS:
        return Target(model, f"preset:{model}", {"source": "preset", "model_id": model, "seed": 0,
                                                 "prompt_format": "plain",
                                                 "max_prompt_tokens": DEFAULT_MAX_PROMPT_TOKENS}, label=model)
    folder = str(Path(model).resolve())
    return Target(model, f"path:{folder}", {"source": "path", "model_id": folder, "prompt_format": "plain",
                                            "max_prompt_tokens": DEFAULT_MAX_PROMPT_TOKENS}, label=folder)


def _check_room(actor: Actor, settings: Settings, adding: int) -> None:
    waiting = db.session.execute(select(func.count()).where(GenerationRequest.created_by == actor.user_id,
                                                            GenerationRequest.status == PENDING)).scalar()
    if waiting + adding > settings.max_waiting:
        raise TooManyRequests(
            f"you have {waiting} playground requests waiting (at most {settings.max_waiting}): wait for them to "
            "be answered or cancel some", {"waiting": f"{waiting} of {settings.max_waiting} allowed"}, retry_after=5)


def submit(models: list[Any], prompts: Any, settings: Any, actor: Actor, limits: Settings,
           model_roots: Sequence[Path], side_by_side: bool = False) -> list[GenerationRequest]:
    """One request per model, all checked before any is kept; asked on the page (`side_by_side`), they share
    a group whose page shows them in columns."""
    problems: dict[str, str] = {}
    checked_prompts, prompt_problems = generation.check_prompts(prompts)
    checked_settings, setting_problems = generation.check_settings(settings)
    problems.update(prompt_problems)
    problems.update(setting_problems)
    targets = []
    for i, model in enumerate(models):
        try:
            targets.append(target_of(model, model_roots))
        except ValidationError as exc:
            problems.update({(f"models[{i}]" if len(models) > 1 else "model"): v for v in exc.details.values()})
    if problems:
        raise ValidationError("invalid playground request", problems)
    _check_room(actor, limits, len(targets))
    group = uuid.uuid4() if side_by_side or len(targets) > 1 else None
    rows = [GenerationRequest(group_id=group, position=i, created_by=actor.user_id, model=t.model, model_key=t.key,
                              run_id=t.run_id, model_version_id=t.version_id, spec=t.spec, prompts=checked_prompts,
                              settings=checked_settings, status=PENDING) for i, t in enumerate(targets)]
    db.session.add_all(rows)
    db.session.flush()
    for row in rows:
        notify(db.session, QUEUE_CHANNEL, f"{PAYLOAD_PREFIX}{row.id}")
    db.session.commit()
    return rows


def get(request_id: Any, limits: Settings) -> GenerationRequest:
    """The request with this id (NotFoundError otherwise); one nobody took within the wait fails now."""
    try:
        row = db.session.get(GenerationRequest, uuid.UUID(str(request_id)))
    except ValueError:
        row = None
    if row is None:
        raise NotFoundError(f"no playground request with id {str(request_id)[:60]!r}")
    _expire_if_unanswered([row], limits)
    return row


def group(group_id: Any, limits: Settings) -> list[GenerationRequest]:
    """The requests asked side by side, in their columns' order."""
    try:
        key = uuid.UUID(str(group_id))
    except ValueError:
        key = None
    rows = list(db.session.scalars(select(GenerationRequest).where(GenerationRequest.group_id == key)
                                   .order_by(GenerationRequest.position))) if key else []
    if not rows:
        raise NotFoundError(f"no playground comparison with id {str(group_id)[:60]!r}")
    _expire_if_unanswered(rows, limits)
    return rows


def _expire_if_unanswered(rows: list[GenerationRequest], limits: Settings) -> None:
    # No worker may be running at all: a request must still end, and say why, rather than wait forever.
    stale = [r.id for r in rows if r.status == PENDING]
    if not stale:
        return
    expired = db.session.execute(
        update(GenerationRequest)
        .where(GenerationRequest.id.in_(stale), GenerationRequest.status == PENDING,
               GenerationRequest.created_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, limits.wait_seconds))
        .values(status=FAILED, finished_at=func.now(), error_message=(
            f"no worker answered within {limits.wait_seconds:.0f} s: start one (python worker.py) or free a "
            "device, then ask again"))
        .returning(GenerationRequest.id)).all()
    db.session.commit()
    if expired:
        for row in rows:
            db.session.refresh(row)


def cancel(row: GenerationRequest, actor: Actor) -> GenerationRequest:
    """Waiting: cancelled now. Being answered: its worker stops before the next prompt. Ended: 409."""
    if not actor.may_change(row.created_by):
        raise ForbiddenError("you may cancel only your own playground requests")
    if row.status == PENDING:
        db.session.execute(update(GenerationRequest).where(GenerationRequest.id == row.id,
                                                           GenerationRequest.status == PENDING)
                           .values(status=CANCELLED, finished_at=func.now(), error_message="cancelled while waiting"))
    elif row.status == RUNNING:
        db.session.execute(update(GenerationRequest).where(GenerationRequest.id == row.id,
                                                           GenerationRequest.status == RUNNING)
                           .values(cancel_requested_at=func.now()))
        notify(db.session, CANCEL_CHANNEL, f"{PAYLOAD_PREFIX}{row.id}")
    else:
        raise ConflictError(f"the request has already ended ({row.status})")
    db.session.commit()
    db.session.refresh(row)
    return row


@dataclass(frozen=True)
class Wait:
    """Where a waiting request stands: requests and runs ahead of it, and whether any worker answers."""

    ahead: int
    runs_ahead: int
    workers: int


def wait_of(row: GenerationRequest, live_seconds: float, passover_seconds: float) -> Wait:
    """What a waiting request waits for, in the claim's order: older requests, and the runs that go first
    (queued before it and waiting past the passover)."""
    ahead = db.session.execute(select(func.count()).where(
        GenerationRequest.status == PENDING, GenerationRequest.created_at < row.created_at)).scalar()
    runs = db.session.execute(select(func.count()).where(
        TunixRun.status == "pending", TunixRun.queued_at < row.created_at,
        TunixRun.queued_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, passover_seconds))).scalar()
    workers = db.session.execute(select(func.count()).where(
        Worker.state.in_(("idle", "running")), Worker.playground != "off",
        Worker.last_seen_at > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, live_seconds))).scalar()
    return Wait(int(ahead), int(runs), int(workers))


def label_of(row: GenerationRequest) -> str:
    """What a column is headed with: a run's name (its export), a version's reference, else the model asked."""
    if row.run_id is not None:
        run = db.session.get(TunixRun, row.run_id)
        return f"{run.title}: its export" if run is not None else row.model
    if row.model_version_id is not None:
        version = db.session.get(ModelVersion, row.model_version_id)
        return version.ref if version is not None else row.model
    return row.model


def history(model_key: str, limit: int = 50) -> list[GenerationRequest]:
    """The prompts asked of one model, newest first."""
    return list(db.session.scalars(select(GenerationRequest).where(GenerationRequest.model_key == model_key)
                                   .order_by(GenerationRequest.created_at.desc()).limit(limit)))


def key_of_run(run: TunixRun) -> str:
    """The history key of a run's export (as `target_of` makes it for runs:/<id>)."""
    return f"run:{run.id}"


def key_of_version(version: ModelVersion) -> str:
    """The history key of a registry version, whatever alias named it."""
    return f"version:{version.id}"


def asked_count(model_key: str) -> int:
    """How many requests asked this model (an index range count)."""
    return int(db.session.execute(select(func.count()).where(GenerationRequest.model_key == model_key)).scalar())
