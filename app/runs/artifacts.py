"""A run's artifacts: listing its directory and resolving downloads without escaping it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.contract.run_files import run_directory

MAX_LISTED = 500


@dataclass(frozen=True)
class ArtifactFile:
    path: str  # relative to the run directory, with forward slashes
    size_bytes: int


def _run_dir(root: str | Path, run_id) -> Path:
    return run_directory(root, run_id).resolve()


def list_files(root: str | Path, run_id) -> list[ArtifactFile]:
    """Every regular file under the run's directory (first 500, sorted); empty when it has none."""
    run_dir = _run_dir(root, run_id)
    if not run_dir.is_dir():
        return []
    files = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".tmp"):
            files.append(ArtifactFile(path.relative_to(run_dir).as_posix(), path.stat().st_size))
            if len(files) >= MAX_LISTED:
                break
    return files


def resolve_file(root: str | Path, run_id, relative: str) -> Path | None:
    """The file a download names, or None when it is missing or would leave the run's directory."""
    run_dir = _run_dir(root, run_id)
    candidate = (run_dir / relative).resolve()
    if not candidate.is_relative_to(run_dir) or not candidate.is_file():
        return None
    return candidate
