"""Reads of the registry for its pages and the API."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from app.extensions import db
from app.models import ModelAlias, ModelVersion, RegisteredModel, TunixRun


@dataclass(frozen=True)
class ModelRow:
    model: RegisteredModel
    versions: int
    aliases: list[ModelAlias]


def list_models(limit: int = 500) -> list[ModelRow]:
    """Every registered model with its number of versions and its aliases, by name."""
    counts = dict(db.session.execute(select(ModelVersion.model_id, func.count()).group_by(ModelVersion.model_id)).all())
    aliases: dict[int, list[ModelAlias]] = {}
    for row in db.session.scalars(select(ModelAlias).order_by(ModelAlias.alias)):
        aliases.setdefault(row.model_id, []).append(row)
    return [ModelRow(m, counts.get(m.id, 0), aliases.get(m.id, []))
            for m in db.session.scalars(select(RegisteredModel).order_by(RegisteredModel.name).limit(limit))]


def model_names() -> list[str]:
    return list(db.session.scalars(select(RegisteredModel.name).order_by(RegisteredModel.name)))


def version_count(model: RegisteredModel) -> int:
    return db.session.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.model_id == model.id))


def versions_page(model: RegisteredModel, offset: int = 0, limit: int = 50) -> list[ModelVersion]:
    """A page of the model's versions (archived ones included), newest first."""
    return list(db.session.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id)
                                   .order_by(ModelVersion.number.desc()).offset(offset).limit(limit)))


def score_series(model: RegisteredModel, metric: str) -> list[tuple[int, float]]:
    """(version number, score) of every version that recorded the metric, in version order: the chart's
    points, read as two columns whatever the number of versions."""
    value = ModelVersion.scores[metric].astext
    rows = db.session.execute(select(ModelVersion.number, value).where(
        ModelVersion.model_id == model.id, func.jsonb_typeof(ModelVersion.scores[metric]) == "number")
        .order_by(ModelVersion.number)).all()
    return [(number, float(score)) for number, score in rows]


def trained_from(version: ModelVersion, limit: int = 100) -> list[TunixRun]:
    """The runs whose base model resolved to this version, newest first."""
    return list(db.session.scalars(select(TunixRun).where(TunixRun.model_version_id == version.id)
                                   .order_by(TunixRun.created_at.desc()).limit(limit)))


def registered_from(run_id) -> list[ModelVersion]:
    """The versions a run's model became."""
    return list(db.session.scalars(select(ModelVersion).where(ModelVersion.source_run_id == run_id)
                                   .order_by(ModelVersion.id)))


def lineage_chain(version: ModelVersion, limit: int = 20) -> list[ModelVersion]:
    """The version, the version its run trained from, and so on back to a preset or a checkpoint."""
    chain = [version]
    while len(chain) < limit:
        base = chain[-1].lineage.get("base") or {}
        found = db.session.get(ModelVersion, base["version_id"]) if base.get("kind") == "registry" \
            and isinstance(base.get("version_id"), int) else None
        if found is None or found in chain:
            break
        chain.append(found)
    return chain
