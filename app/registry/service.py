"""Registering models, moving aliases, archiving versions, and resolving models:/ references.

A version's files are copied from its run into the registry's blobs before its row is written (the copy
is by content, so a retry or a second registration copies nothing); the row is written under a lock on
the model, which numbers versions one after another and finds a version of the same digest.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Mapping

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from app import instruments
from app.accounts.service import Actor
from app.artifacts import store as object_store
from app.artifacts.model_store import ModelStore, digest_of
from app.artifacts.run_store import StoredFile, run_store
from app.artifacts.store import StoreError, StoreSettings, location_of
from app.contract import model_catalog, model_refs
from app.contract.run_files import ADAPTER_DIR, MODEL_DIR
from app.errors import ConflictError, ForbiddenError, NotFoundError, StoreUnreachable, ValidationError, echo
from app.extensions import db
from app.models import AliasMove, ModelAlias, ModelVersion, RegisteredModel, TunixRun, utcnow
from app.registry import gates
from app.registry.rules import check_alias, check_name, check_owner, scores_of
from app.run_states import ACTIVE_STATUSES, COMPLETED, DRY_RUN

log = logging.getLogger(__name__)

DESCRIPTION_MAX = 2000
REASON_MAX = 500
WEB_RETRY_SECONDS = 30.0  # a registration copies files inside its request: it may wait out a short outage


def _text(value: Any, field: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError("invalid field", {field: "must be a string"})
    if len(value) > limit:
        raise ValidationError("invalid field", {field: f"must be at most {limit} characters"})
    return value.strip()


def get_model(name: str) -> RegisteredModel | None:
    return db.session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))


def model_or_404(name: str) -> RegisteredModel:
    model = get_model(name)
    if model is None:
        raise NotFoundError(f"no registered model named {name[:80]!r}")
    return model


def get_version(model: RegisteredModel, number: int) -> ModelVersion | None:
    return db.session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                        ModelVersion.number == number))


def version_or_404(model: RegisteredModel, number: Any) -> ModelVersion:
    found = get_version(model, int(number)) if str(number).isdecimal() and len(str(number)) < 10 else None
    if found is None:
        raise NotFoundError(f"{model.name} has no version {str(number)[:20]!r}")
    return found


def model_files(files: list[StoredFile]) -> list[tuple[str, StoredFile]]:
    """The files a run's version holds, by their path in the version: its exported model (at the top, a
    checkpoint folder as a run's base model reads one) and, for a LoRA run, its adapter (under adapter/)."""
    chosen = []
    for item in files:
        if item.path.startswith(MODEL_DIR + "/"):
            chosen.append((item.path[len(MODEL_DIR) + 1:], item))
        elif item.path.startswith(ADAPTER_DIR + "/"):
            chosen.append((item.path, item))
    return sorted(chosen)


def _registry_settings(config: Mapping[str, Any], retry_seconds: float) -> StoreSettings:
    return replace(StoreSettings.from_config(config), retry_seconds=retry_seconds)


def _read_json(source, item: StoredFile | None) -> dict:
    if item is None:
        return {}
    try:
        value = json.loads(b"".join(object_store.stream(source.store, item.entry)))
    except (ValueError, StoreError):
        return {}
    return value if isinstance(value, dict) else {}


def _facts(source, chosen: list[tuple[str, StoredFile]]) -> dict[str, Any]:
    """What a submission checks of a version without its files: its family, heads, chat template."""
    by_path = dict(chosen)
    config = _read_json(source, by_path.get(model_catalog.CHECKPOINT_CONFIG))
    template = _read_json(source, by_path.get(model_catalog.TOKENIZER_CONFIG)).get("chat_template")
    return {"model_type": config.get("model_type"),
            "num_attention_heads": config.get("num_attention_heads"),
            "num_key_value_heads": config.get("num_key_value_heads"),
            "chat_template": bool(template)}


def base_of(run: TunixRun) -> dict[str, Any]:
    """What a run trained from, as a version's lineage keeps it."""
    if run.model_version_id is not None:
        version = db.session.get(ModelVersion, run.model_version_id)
        return {"kind": "registry", "ref": run.model_id, "version": version.ref if version else None,
                "version_id": run.model_version_id, "digest": run.model_digest}
    if run.model_id in model_catalog.PRESETS:
        return {"kind": "preset", "id": run.model_id}
    return {"kind": "path", "path": run.model_id}


@dataclass
class Registered:
    version: ModelVersion
    created: bool


def register(run: TunixRun, name: Any, actor: Actor, *, alias: Any = None, description: Any = None,
             reason: Any = None) -> Registered:
    """Make the run's model a version of `name` (created for the actor when new); the same files registered
    again give back the version they are. With `alias`, the alias is moved to it (its own rules apply)."""
    name = check_name(name)
    alias = check_alias(alias) if alias not in (None, "") else None
    description = _text(description, "description", DESCRIPTION_MAX)
    if run.mode == DRY_RUN or run.status != COMPLETED:
        raise ConflictError(f"run {run.id} is {'a dry run' if run.mode == DRY_RUN else run.status}; only a "
                            "completed run's model can be registered", {"run_id": "has no trained model"})
    model = get_model(name)
    if model is not None:
        check_owner(model, actor, "register versions of it")
    config = current_app.config
    source = run_store(_registry_settings(config, WEB_RETRY_SECONDS), run.artifacts_url, run.id)
    try:
        chosen = model_files(source.files())
    except StoreError as exc:
        raise StoreUnreachable(f"the run's files could not be listed: {exc}") from None
    if not chosen:
        raise ConflictError(f"run {run.id} stored no exported model", {"run_id": "has no model/ folder"})
    if any(item.entry.sha256 is None for _, item in chosen):
        raise ConflictError(f"run {run.id} was stored before checksums were kept; its model cannot be registered",
                            {"run_id": "has no checksums"})
    files = [{"path": path, "size": item.entry.size, "sha256": item.entry.sha256} for path, item in chosen]
    digest = digest_of(files)
    location = location_of(config)
    blobs = ModelStore(_registry_settings(config, WEB_RETRY_SECONDS), location)
    existing = _version_with_digest(model, digest) if model is not None else None
    if existing is None:
        db.session.rollback()  # end the reads: no transaction stays open while a gigabyte is copied
        try:
            for _, item in chosen:
                blobs.bring_in(source, item)
        except object_store.IntegrityError as exc:
            raise ConflictError(f"run {run.id}'s stored model is not what it stored: {exc}",
                                {"run_id": "its files changed"}) from None
        except StoreError as exc:
            raise StoreUnreachable(f"the model's files could not be copied into the registry: {exc}") from None

    model = _locked_model(name, actor, description)
    check_owner(model, actor, "register versions of it")
    version = _version_with_digest(model, digest)
    created = version is None
    if created:
        facts = _facts(source, chosen)
        model.versions_made += 1
        version = ModelVersion(
            model_id=model.id, number=model.versions_made, digest=digest, size_bytes=sum(f["size"] for f in files),
            files=files, store_url=location, source_run_id=run.id, facts=facts, scores=scores_of(run),
            lineage={"run_id": str(run.id), "run_name": run.name, "dataset_key": run.dataset_key,
                     "eval_dataset_key": (run.config or {}).get("eval_dataset_key"), "base": base_of(run),
                     "config": run.config},
            created_by=actor.user_id)
        db.session.add(version)
        db.session.flush()
    if alias is not None:
        _, move = _move(model, alias, version, actor, reason=_text(reason, "reason", REASON_MAX), override=False,
                        protected=None)
    db.session.commit()
    if created:
        instruments.MODEL_VERSIONS.inc()
    if alias is not None:
        _count(move)
    log.info("model %s: version %d %s from run %s", name, version.number, "registered" if created else "exists",
             run.id)
    return Registered(version, created)


def _version_with_digest(model: RegisteredModel, digest: str) -> ModelVersion | None:
    return db.session.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                        ModelVersion.digest == digest))


def _locked_model(name: str, actor: Actor, description: str) -> RegisteredModel:
    """The model by name, created for the actor when it is new, locked until the transaction ends."""
    db.session.execute(pg_insert(RegisteredModel).values(name=name, description=description, owner_id=actor.user_id,
                                                         created_at=utcnow(), versions_made=0)
                       .on_conflict_do_nothing(index_elements=["name"]))
    return db.session.scalar(select(RegisteredModel).where(RegisteredModel.name == name)
                             .with_for_update(of=RegisteredModel).execution_options(populate_existing=True))


def protected_by_default(alias: str) -> bool:
    return alias in current_app.config["PROTECTED_ALIASES"]


def move_alias(model: RegisteredModel, alias: Any, number: Any, actor: Actor, *, reason: Any = None,
               override: Any = False, protected: Any = None) -> ModelAlias:
    """Point an alias at a version, keeping the move in its history (see `_move` for the rules)."""
    alias = check_alias(alias)
    if isinstance(number, bool) or not isinstance(number, int):
        if not (isinstance(number, str) and number.strip().isdecimal() and len(number.strip()) < 10):
            raise ValidationError("invalid version", {"version": "must be a version number"})
        number = int(number)
    if not isinstance(override, bool):
        raise ValidationError("invalid field", {"override": "must be true or false"})
    if protected is not None and not isinstance(protected, bool):
        raise ValidationError("invalid field", {"protected": "must be true or false"})
    reason = _text(reason, "reason", REASON_MAX)
    db.session.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())
    version = get_version(model, number)
    if version is None:
        raise ValidationError("unknown version", {"version": f"{model.name} has no version {number}"})
    row, move = _move(model, alias, version, actor, reason=reason, override=override, protected=protected)
    db.session.commit()
    _count(move)
    return row


def _move(model: RegisteredModel, alias: str, version: ModelVersion, actor: Actor, *, reason: str,
          override: bool, protected: bool | None) -> tuple[ModelAlias, AliasMove | None]:
    """Members move their own models' aliases; a protected alias (champion by default) is moved by admins
    alone, and only to a version whose run passed every gate of the model, unless an admin overrides the
    gates with a reason (kept in the history)."""
    check_owner(model, actor, f"move its alias {alias}")
    if version.archived_at is not None:
        raise ConflictError(f"version {version.number} of {model.name} is archived", {"version": "is archived"})
    row = db.session.scalar(select(ModelAlias).where(ModelAlias.model_id == model.id, ModelAlias.alias == alias)
                            .with_for_update(of=ModelAlias).execution_options(populate_existing=True))
    is_protected = row.protected if row is not None else protected_by_default(alias)
    if protected is not None and protected != is_protected:
        if not actor.is_admin:
            raise ForbiddenError("only an admin may protect or unprotect an alias", {"protected": "is for admins"})
        is_protected = protected
    if is_protected:
        if not actor.is_admin:
            raise ForbiddenError(f"{alias} is a protected alias: only an admin may move it",
                                 {"alias": "is protected"})
        failing = gates.unpassed(model, version)
        if failing and not override:
            raise ConflictError(f"version {version.number} did not pass every gate of {model.name}; an admin may "
                                "override with a reason", {f"gate {g.gate_id}": g.why for g in failing})
        if failing and not reason:
            raise ValidationError("a reason is required", {"reason": "is required to move past failing gates"})
        override = bool(failing)
    else:
        override = False
    before = row.version.number if row is not None else None
    now = utcnow()
    if row is None:
        row = ModelAlias(model_id=model.id, alias=alias, version_id=version.id, protected=is_protected, updated_at=now)
        db.session.add(row)
    elif row.version_id == version.id and row.protected == is_protected:
        return row, None
    row.version_id, row.protected, row.updated_at = version.id, is_protected, now
    move = AliasMove(model_id=model.id, alias=alias, from_number=before, to_number=version.number,
                     moved_by=actor.user_id, moved_by_name=actor.username, reason=reason, override=override,
                     moved_at=now)
    db.session.add(move)
    db.session.flush()
    return row, move


def _count(move: AliasMove | None) -> None:
    if move is not None:
        instruments.ALIAS_MOVES.labels(override=str(move.override).lower()).inc()


def alias_history(model: RegisteredModel, alias: str | None = None, limit: int = 200) -> list[AliasMove]:
    """Moves of the model's aliases (or one alias), newest first."""
    query = select(AliasMove).where(AliasMove.model_id == model.id)
    if alias is not None:
        query = query.where(AliasMove.alias == alias)
    return list(db.session.scalars(query.order_by(AliasMove.moved_at.desc(), AliasMove.id.desc()).limit(limit)))


def alias_at(model: RegisteredModel, alias: str, when: datetime) -> AliasMove | None:
    """The move that put the alias where it was at `when` (None: it pointed nowhere yet)."""
    return db.session.scalar(select(AliasMove).where(
        AliasMove.model_id == model.id, AliasMove.alias == alias, AliasMove.moved_at <= when)
        .order_by(AliasMove.moved_at.desc(), AliasMove.id.desc()).limit(1))


def aliases_of(model: RegisteredModel) -> list[ModelAlias]:
    return list(db.session.scalars(select(ModelAlias).where(ModelAlias.model_id == model.id)
                                   .order_by(ModelAlias.alias)))


def archive(version: ModelVersion, actor: Actor) -> ModelVersion:
    """Hide a version from pickers (kept for lineage); not while an alias points at it or an active run uses it."""
    model = version.model
    check_owner(model, actor, "archive its versions")
    db.session.execute(select(RegisteredModel.id).where(RegisteredModel.id == model.id).with_for_update())
    aliases = db.session.scalars(select(ModelAlias.alias).where(ModelAlias.version_id == version.id)).all()
    if aliases:
        raise ConflictError(f"version {version.number} is {', '.join('@' + a for a in aliases)}: move the alias "
                            "first", {"version": "an alias points at it"})
    active = db.session.scalar(select(func.count()).select_from(TunixRun).where(
        TunixRun.model_version_id == version.id, TunixRun.status.in_(ACTIVE_STATUSES)))
    if active:
        raise ConflictError(f"{active} pending or running run(s) train from version {version.number}",
                            {"version": "an active run uses it"})
    if version.archived_at is None:
        version.archived_at = utcnow()
    db.session.commit()
    return version


@dataclass(frozen=True)
class Resolved:
    """A models:/ reference as a submission fixes it: the version it names now, and its digest."""

    ref: str
    version: ModelVersion


def resolve(model_id: str) -> Resolved:
    """The version a models:/ reference names now; ValidationError on model_id when there is none."""
    try:
        ref = model_refs.parse(model_id)
    except ValueError as exc:
        raise ValidationError("invalid model", {"model_id": str(exc)}) from None
    model = get_model(ref.name)
    if model is None:
        raise ValidationError("unknown model", {"model_id": f"no registered model named {echo(ref.name)}"})
    if ref.alias is not None:
        row = db.session.get(ModelAlias, (model.id, ref.alias))
        if row is None:
            raise ValidationError("unknown alias", {"model_id": f"{model.name} has no alias {echo(ref.alias)}"})
        return Resolved(str(ref), row.version)
    version = get_version(model, ref.number)
    if version is None:
        raise ValidationError("unknown version", {"model_id": f"{model.name} has no version {ref.number}"})
    return Resolved(str(ref), version)


PICKED_VERSIONS = 20  # of each model, newest first, in a picker


def pickable() -> list[tuple[str, str]]:
    """(reference, label) of every alias and of each model's newest unarchived versions, for the model
    pickers: two queries, whatever the number of models."""
    aliases = db.session.execute(select(RegisteredModel.name, ModelAlias.alias, ModelVersion.number)
                                 .join(ModelAlias, ModelAlias.model_id == RegisteredModel.id)
                                 .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)).all()
    newest = func.row_number().over(partition_by=ModelVersion.model_id,
                                    order_by=ModelVersion.number.desc()).label("newest")
    ranked = select(ModelVersion.model_id, ModelVersion.number, newest).where(
        ModelVersion.archived_at.is_(None)).subquery()
    versions = db.session.execute(select(RegisteredModel.name, ranked.c.number)
                                  .join(ranked, ranked.c.model_id == RegisteredModel.id)
                                  .where(ranked.c.newest <= PICKED_VERSIONS)).all()
    choices = [(name, 0, alias, f"models:/{name}@{alias}", f"{name} @{alias} (version {number})")
               for name, alias, number in aliases]
    choices += [(name, 1, -number, f"models:/{name}/{number}", f"{name} version {number}")
                for name, number in versions]
    return [(ref, label) for *_, ref, label in sorted(choices, key=lambda c: c[:3])]
