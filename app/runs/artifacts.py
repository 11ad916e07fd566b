"""A run's artifacts: listing its directory by what the files are, and reading them without escaping it."""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from app.contract.run_files import (ADAPTER_DIR, CHECKPOINTS_DIR, DATASET_FILE, EVAL_DATASET_FILE,
                                    EVALUATION_BEFORE_FILE, METRICS_FILE, MODEL_DIR, PREDICTIONS_FILE,
                                    RUN_CONFIG_FILE, SUMMARY_FILE, TRAINER_LOCK_FILE, run_directory)

MAX_LISTED = 500
ARCHIVE_CHUNK = 1024 * 1024
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


def _run_dir(root: str | Path, run_id) -> Path:
    return run_directory(root, run_id).resolve()


def _is_listed(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and not path.name.endswith(".tmp") and \
        path.name != TRAINER_LOCK_FILE


def group(root: str | Path, run_id) -> Artifacts:
    """The run's files, grouped; each checkpoint step summed into one line (its files are not listed)."""
    run_dir = _run_dir(root, run_id)
    found = Artifacts()
    if not run_dir.is_dir():
        return found
    checkpoints = run_dir / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        for step_dir in sorted((p for p in checkpoints.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)),
                               key=lambda p: int(p.name)):
            files = [p for p in step_dir.rglob("*") if _is_listed(p)]
            found.checkpoints.append(Checkpoint(int(step_dir.name), step_dir.relative_to(run_dir).as_posix(),
                                                sum(p.stat().st_size for p in files), len(files)))
    results = {SUMMARY_FILE, METRICS_FILE, PREDICTIONS_FILE, EVALUATION_BEFORE_FILE}
    inputs = {RUN_CONFIG_FILE, DATASET_FILE, EVAL_DATASET_FILE}
    listed = 0
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if relative.parts[0] == CHECKPOINTS_DIR or not _is_listed(path):
            continue
        item = ArtifactFile(relative.as_posix(), path.stat().st_size)
        if relative.parts[0] == MODEL_DIR:
            found.model.append(item)
        elif relative.parts[0] == ADAPTER_DIR:
            found.adapter.append(item)
        elif item.path in results:
            found.results.append(item)
        elif item.path in inputs:
            found.inputs.append(item)
        elif listed < MAX_LISTED:
            found.other.append(item)
            listed += 1
    return found


def resolve_file(root: str | Path, run_id, relative: str) -> Path | None:
    """The file a download names, or None when it is missing or would leave the run's directory."""
    run_dir = _run_dir(root, run_id)
    try:
        candidate = (run_dir / relative).resolve()
        if not candidate.is_relative_to(run_dir) or not candidate.is_file():
            return None
    except (OSError, ValueError):  # a name too long, a NUL byte: no such file either way
        return None
    return candidate


def resolve_folder(root: str | Path, run_id, relative: str) -> Path | None:
    """A folder of the run's directory (the model, a checkpoint step), or None when missing or outside it."""
    run_dir = _run_dir(root, run_id)
    try:
        candidate = (run_dir / relative).resolve()
        if not candidate.is_relative_to(run_dir) or candidate == run_dir or not candidate.is_dir():
            return None
    except (OSError, ValueError):
        return None
    return candidate


_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def archive_name(root: str | Path, run_id, folder: Path) -> str:
    """The download name of a resolved folder of the run: built from where it is, never from the path
    the client sent, and plain ASCII, so nothing in it can end the header it goes into."""
    relative = folder.relative_to(_run_dir(root, run_id))
    parts = [_UNSAFE_IN_NAME.sub("_", part).strip("._") or "_" for part in relative.parts]
    return f"run-{str(run_id)[:8]}-{'-'.join(parts)}"[:200]


class _Sink:
    """A write-only file that hands out what was written so far; zipfile streams into it."""

    def __init__(self):
        self._chunks: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._chunks = b"".join(self._chunks), []
        return data


def stream_zip(folder: Path, prefix: str) -> Iterator[bytes]:
    """A zip archive of `folder`, produced piece by piece: never more than a chunk of a file in memory."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(folder.rglob("*")):
            if not _is_listed(path):
                continue
            name = f"{prefix}/{path.relative_to(folder).as_posix()}"
            with path.open("rb") as source, archive.open(name, "w", force_zip64=True) as target:
                while chunk := source.read(ARCHIVE_CHUNK):
                    target.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
