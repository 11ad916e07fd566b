"""A run whose base model is a registered version: its files fetched into the scratch folder, each checked
against its SHA-256 and the set against the digest the run recorded at submission, before the trainer starts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from app.artifacts.model_store import ModelStore, digest_of
from app.artifacts.store import IntegrityError, StoreSettings
from app.contract.run_files import BASE_MODEL_DIR
from app.extensions import db
from app.models import ModelVersion, TunixRun


@dataclass(frozen=True)
class RegisteredBase:
    """The version a run resolved its models:/ reference to, as the worker fetches it."""

    ref: str  # models:/<name>/<number>
    asked: str  # what the run named (an alias, perhaps)
    digest: str  # what the run recorded at submission
    files: list[dict[str, Any]]
    store_url: str


class BaseModelRefused(Exception):
    """The registered version's files are not the ones the run was submitted with."""


def registered_base(run_id) -> RegisteredBase | None:
    """The registered version a run trains from, or None for a preset or a local checkpoint."""
    row = db.session.execute(select(ModelVersion, TunixRun.model_digest, TunixRun.model_id)
                             .join(TunixRun, TunixRun.model_version_id == ModelVersion.id)
                             .where(TunixRun.id == run_id)).first()
    if row is None:
        return None
    version, digest, asked = row
    return RegisteredBase(version.ref, asked, digest, list(version.files), version.store_url)


def folder(run_dir: Path) -> Path:
    """Where a run's registered base is fetched to (its trainer's config names it)."""
    return run_dir / BASE_MODEL_DIR


def fetch(base: RegisteredBase, run_dir: Path, settings: StoreSettings,
          should_stop: Callable[[], bool] | None = None) -> None:
    """Fetch and check the version's files into `folder(run_dir)`; BaseModelRefused when they are not what
    the run was submitted with."""
    listed = digest_of(base.files)
    if listed != base.digest:
        raise BaseModelRefused(f"model version {base.ref} does not match its digest: its files give {listed[:12]}…, "
                               f"the run was submitted with {base.digest[:12]}…")
    try:
        ModelStore(settings, base.store_url, should_stop=should_stop).fetch(base.files, folder(run_dir))
    except IntegrityError as exc:
        raise BaseModelRefused(f"model version {base.ref} does not match its digest {base.digest[:12]}…: "
                               f"{exc}") from None
    except FileNotFoundError:  # obstore's NotFoundError is one too
        raise BaseModelRefused(f"model version {base.ref}: a file of it is missing from the store "
                               f"({base.store_url})") from None
