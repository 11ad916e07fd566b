"""A run's artifacts as its page shows them: its stored files grouped by what they are, and folders zipped."""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

from app.artifacts import archives, store as object_store
from app.artifacts.run_store import RunStore, StoredFile, run_store
from app.artifacts.store import StoreSettings
from app.contract.run_files import (ADAPTER_DIR, CHECKPOINTS_DIR, DATASET_FILE, EVAL_DATASET_FILE,
                                    EVALUATION_BEFORE_FILE, METRICS_FILE, MODEL_DIR, PREDICTIONS_FILE,
                                    RUN_CONFIG_FILE, RUN_LOG_FILE, SUMMARY_FILE)

MAX_LISTED = 500
_STEP_DIR = re.compile(r"^\d+$")


@dataclass(frozen=True)
class ArtifactFile:
    path: str  # relative to the run directory, with forward slashes
    size_bytes: int


@dataclass(frozen=True)
class Checkpoint:
    """One saved step of the orbax checkpoints: a folder of many files, shown as one line."""

    step: int
    path: str
    size_bytes: int
    files: int


@dataclass
class Artifacts:
    """A run's files by what they are: the model and adapter first, then results, inputs, checkpoints, the rest."""

    model: list[ArtifactFile] = field(default_factory=list)
    adapter: list[ArtifactFile] = field(default_factory=list)  # a LoRA run's adapters alone
    results: list[ArtifactFile] = field(default_factory=list)  # summary, metrics, predictions
    inputs: list[ArtifactFile] = field(default_factory=list)  # the config and the dataset export
    checkpoints: list[Checkpoint] = field(default_factory=list)
    other: list[ArtifactFile] = field(default_factory=list)

    @property
    def model_size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.model)

    @property
    def adapter_size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.adapter)

    @property
    def empty(self) -> bool:
        return not (self.model or self.adapter or self.results or self.inputs or self.checkpoints or self.other)


WEB_RETRY_SECONDS = 5.0  # a page or a download waits this long for the store, not a worker's whole budget


def of_run(run, config: Mapping[str, Any], retry_seconds: float = WEB_RETRY_SECONDS) -> RunStore:
    """The run's files where it recorded them, read with a retry budget a person can wait out."""
    settings = replace(StoreSettings.from_config(config), retry_seconds=retry_seconds)
    return run_store(settings, run.artifacts_url, run.id)


def group(stored: list[StoredFile]) -> Artifacts:
    """The run's stored files, grouped; each checkpoint step summed into one line (its files are not listed)."""
    found = Artifacts()
    steps: dict[int, list[StoredFile]] = {}
    results = {SUMMARY_FILE, METRICS_FILE, PREDICTIONS_FILE, EVALUATION_BEFORE_FILE, RUN_LOG_FILE}
    inputs = {RUN_CONFIG_FILE, DATASET_FILE, EVAL_DATASET_FILE}
    listed = 0
    for item in stored:
        parts = item.path.split("/")
        if parts[0] == CHECKPOINTS_DIR:
            if len(parts) > 2 and _STEP_DIR.match(parts[1]):
                steps.setdefault(int(parts[1]), []).append(item)
            continue
        file = ArtifactFile(item.path, item.size_bytes)
        if parts[0] == MODEL_DIR and len(parts) > 1:
            found.model.append(file)
        elif parts[0] == ADAPTER_DIR and len(parts) > 1:
            found.adapter.append(file)
        elif item.path in results:
            found.results.append(file)
        elif item.path in inputs:
            found.inputs.append(file)
        elif listed < MAX_LISTED:
            found.other.append(file)
            listed += 1
    for step in sorted(steps):
        found.checkpoints.append(Checkpoint(step, f"{CHECKPOINTS_DIR}/{step}", sum(f.size_bytes for f in steps[step]),
                                            len(steps[step])))
    return found


_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def normalized(relative: str) -> str | None:
    """A relative name with its '.' and '..' folded in ("model/x/.." is "model"); None when it would leave
    the run's folder or names nothing. Only names the run's stored files hold are served after this."""
    if "\x00" in relative or relative.startswith("/"):
        return None
    folded = posixpath.normpath(relative)
    return None if folded in (".", "") or folded.startswith("..") else folded


def archive_name(run_id, folder: str) -> str:
    """The download name of a folder of the run: plain ASCII, so nothing in it can end the header it goes
    into (the folder is one the run's files hold, never the path the client sent as such)."""
    parts = [_UNSAFE_IN_NAME.sub("_", part).strip("._") or "_" for part in folder.strip("/").split("/")]
    return f"run-{str(run_id)[:8]}-{'-'.join(parts)}"[:200]


def download_name(relative: str) -> str:
    """A stored file's download name: its own name, in plain ASCII."""
    return _UNSAFE_IN_NAME.sub("_", relative.rsplit("/", 1)[-1]).strip("._")[:200] or "file"


def stream_zip(files: RunStore, items: list[StoredFile], folder: str, prefix: str) -> Iterator[bytes]:
    """A zip archive of `items`, the run's stored files under `folder`, made as it is sent: each file is
    read from the store a chunk at a time (and checked against its SHA-256), never held whole."""
    inside = folder.strip("/") + "/"
    return archives.stream_zip((f"{prefix}/{item.path[len(inside):]}",
                                lambda entry=item.entry: object_store.stream(files.store, entry)) for item in items)
