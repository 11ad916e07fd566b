"""A run's files in the store: the one place that names their keys, writes them and reads them back.

A run's files live under `<store>/<run id>/`, at the same relative paths the trainer wrote them in its
scratch folder. What was stored completely is recorded in manifests under `<run id>/.manifests/`: one
per checkpoint step (written after all of the step's files) and `final.json` (after the run's other
files). The manifests are the listing: an object no manifest names is an upload that never finished,
and is neither listed nor served. Runs stored before manifests existed are listed as their objects.
"""
from __future__ import annotations

import json
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from app.artifacts import store as object_store
from app.artifacts.store import Retrier, StoredObject, StoreSettings, UnsafeKey
from app.contract.run_files import CHECKPOINTS_DIR, EVALUATION_BEFORE_FILE, TRAINER_LOCK_FILE

MANIFESTS_DIR = ".manifests"
FINAL_MANIFEST = "final.json"
_CHECKPOINT_MANIFEST = re.compile(r"^checkpoint-(\d+)\.json$")
_STEP = re.compile(r"^\d+$")
RESUME_COMPANIONS = (EVALUATION_BEFORE_FILE,)
CHECKPOINTS_KEPT_WHILE_RUNNING = 2  # as the trainer keeps locally: the newest two steps
FILES_AT_ONCE = 4


def checkpoint_manifest(step: int) -> str:
    return f"checkpoint-{step:010d}.json"


def is_local_leftover(relative: str) -> bool:
    """Files of the scratch folder that are never stored: the trainer's lock, half-written files."""
    name = relative.rsplit("/", 1)[-1]
    return name == TRAINER_LOCK_FILE or name.endswith((".tmp", ".part")) or relative.startswith(MANIFESTS_DIR)


@dataclass(frozen=True)
class StoredFile:
    """A stored file of a run, by its path relative to the run."""

    path: str
    entry: StoredObject

    @property
    def size_bytes(self) -> int:
        return self.entry.size


class StoringProgress:
    """How far the storing of a run's files has come; written by the uploading thread, read by the runner."""

    def __init__(self):
        self._lock = threading.Lock()
        self.files_total = self.files_done = self.bytes_total = self.bytes_done = 0
        self.retrying: str | None = None

    def set_plan(self, sizes: list[int]) -> None:
        """What is left to store, as it is now known (the totals replaced, what was done kept)."""
        with self._lock:
            self.files_total = self.files_done + len(sizes)
            self.bytes_total = self.bytes_done + sum(sizes)

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_done += count
            if count > 0:
                self.retrying = None

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def on_retry(self, attempt: int, error: Exception) -> None:
        with self._lock:
            self.retrying = f"the store did not answer; trying again (try {attempt + 1})"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"files_done": self.files_done, "files_total": self.files_total, "bytes_done": self.bytes_done,
                    "bytes_total": self.bytes_total, "retrying": self.retrying}


@dataclass
class Restored:
    """What a resume found in the store: the step it restored (None: nothing usable) and what it refused."""

    step: int | None = None
    refused: list[str] = field(default_factory=list)


class RunStore:
    """One run's files in the store at `location` (the store URL recorded on the run)."""

    def __init__(self, settings: StoreSettings, location: str, run_id: Any, *,
                 on_retry: Callable[[int, Exception], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.settings = settings
        self.location = location
        self.store = object_store.open_store(settings, location)
        self.prefix = object_store.join_key(str(run_id))
        self.retry = Retrier(replace(settings, url=location), on_retry, should_stop)
        self._sent: dict[str, tuple[int, int, dict[str, Any]]] = {}  # path -> size, mtime and entry stored

    def where(self) -> str:
        """The run's folder in the store, as the page shows it."""
        return f"{object_store.describe(self.location).rstrip('/')}/{self.prefix}/"

    def key(self, relative: str) -> str:
        return object_store.join_key(self.prefix, relative)

    def _relative(self, key: str) -> str:
        return key[len(self.prefix) + 1:]

    # Writing (the worker that holds the run).

    def _store_files(self, run_dir: Path, relatives: list[str], progress: StoringProgress) -> dict[str, Any]:
        """Upload files a few at a time (a checkpoint is dozens of small files, each a round trip or two);
        the first failure is raised once the others have ended."""
        def store_one(relative: str) -> tuple[str, dict[str, Any]]:
            path = run_dir / relative
            seen = path.stat()
            known = self._sent.get(relative)
            if known is not None and known[:2] == (seen.st_size, seen.st_mtime_ns):
                # Unchanged since this process stored it (the scores stored beside each checkpoint): the
                # object stays as it is, so every manifest that names it still matches it.
                progress.add_bytes(seen.st_size)
                progress.file_done()
                return relative, known[2]
            entry = object_store.put_file(self.store, self.retry.settings, self.key(relative), path,
                                          self.retry, progress.add_bytes)
            self._sent[relative] = (seen.st_size, seen.st_mtime_ns, entry.as_json())
            progress.file_done()
            return relative, entry.as_json()

        with ThreadPoolExecutor(max_workers=FILES_AT_ONCE, thread_name_prefix="store") as pool:
            return dict(pool.map(store_one, relatives))

    def _write_manifest(self, name: str, files: dict[str, Any], **extra: Any) -> None:
        body = json.dumps({"files": files, **extra}, indent=1, sort_keys=True).encode()
        object_store.put_bytes(self.store, self.key(f"{MANIFESTS_DIR}/{name}"), body, self.retry)

    def store_checkpoint(self, run_dir: Path, step: int, progress: StoringProgress) -> None:
        """Store one finished checkpoint step, then its manifest: from then on a resume may use it."""
        step_dir = run_dir / CHECKPOINTS_DIR / str(step)
        relatives = sorted(p.relative_to(run_dir).as_posix() for p in step_dir.rglob("*")
                           if p.is_file() and not p.is_symlink() and not is_local_leftover(p.name))
        # What a trainer resuming from this step reads besides it: the scores it had before training.
        relatives += [name for name in RESUME_COMPANIONS if (run_dir / name).is_file()]
        files = self._store_files(run_dir, relatives, progress)
        self._write_manifest(checkpoint_manifest(step), files, step=step)

    def prune_checkpoints(self, keep: int = CHECKPOINTS_KEPT_WHILE_RUNNING) -> None:
        """Delete all but the newest `keep` stored steps (their manifest first, so none is half listed)."""
        for step in self.stored_checkpoints()[:-keep]:
            self.delete_checkpoint(step)

    def final_files(self, run_dir: Path) -> list[str]:
        """The scratch folder's files other than checkpoints: what the end of a run stores."""
        found = []
        for path in sorted(run_dir.rglob("*")):
            relative = path.relative_to(run_dir).as_posix()
            if path.is_file() and not path.is_symlink() and relative.split("/")[0] != CHECKPOINTS_DIR \
                    and not is_local_leftover(relative):
                found.append(relative)
        return found

    def store_final(self, run_dir: Path, relatives: list[str], progress: StoringProgress) -> None:
        """Store the run's files, then the manifest that lists them."""
        files = self._store_files(run_dir, relatives, progress)
        self._write_manifest(FINAL_MANIFEST, files)

    def delete_checkpoint(self, step: int) -> int:
        """Delete a stored checkpoint step; returns the bytes it freed."""
        keys = object_store.list_keys(self.store, self.key(f"{CHECKPOINTS_DIR}/{step}"), self.retry)
        object_store.delete_keys(self.store, [self.key(f"{MANIFESTS_DIR}/{checkpoint_manifest(step)}")], self.retry)
        object_store.delete_keys(self.store, [m["path"] for m in keys], self.retry)
        return sum(m["size"] for m in keys)

    # Reading (the page, downloads, a resume).

    def _manifests(self) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]]] | None:
        """(final manifest, {step: checkpoint manifest}); None when the run has no manifest at all."""
        keys = [m["path"] for m in object_store.list_keys(self.store, self.key(MANIFESTS_DIR), self.retry)]
        if not keys:
            return None
        final, steps = None, {}
        for key in keys:
            name = key.rsplit("/", 1)[-1]
            match = _CHECKPOINT_MANIFEST.match(name)
            if name != FINAL_MANIFEST and not match:
                continue
            try:
                body = json.loads(object_store.get_bytes(self.store, key, self.retry))
            except object_store.NotFoundError:  # deleted meanwhile (a prune, a gc)
                continue
            if match:
                steps[int(match.group(1))] = body
            else:
                final = body
        return final, steps

    def _entries(self, files: dict[str, Any]) -> list[StoredFile]:
        found = []
        for relative, meta in files.items():
            try:
                found.append(StoredFile(relative, StoredObject(self.key(relative), int(meta["size"]), meta.get("sha256"),
                                                               meta.get("etag"))))
            except UnsafeKey:  # a manifest is ours; a name that is not safe is skipped, never followed
                continue
        return found

    def files(self) -> list[StoredFile]:
        """Every stored file of the run, sorted by path: the manifests' entries (or, for a run stored before
        manifests, its objects)."""
        manifests = self._manifests()
        if manifests is None:
            return sorted((StoredFile(self._relative(m["path"]), StoredObject(m["path"], m["size"], None, m.get("e_tag")))
                           for m in object_store.list_keys(self.store, self.prefix + "/", self.retry)
                           if not is_local_leftover(self._relative(m["path"])) and self._inside(m["path"])),
                          key=lambda f: f.path)
        final, steps = manifests
        found = {f.path: f for step in sorted(steps) for f in self._entries(steps[step]["files"])}
        found.update((f.path, f) for f in (self._entries(final["files"]) if final else []))
        return sorted(found.values(), key=lambda f: f.path)

    def _inside(self, key: str) -> bool:
        """In a local store, whether a listed file really lies in the run's folder: the listing follows
        symbolic links, and one planted in an old run's folder must not reach outside it."""
        if object_store.is_object_store(self.location):
            return True
        root = object_store.local_path(self.location)
        path = root / key
        return not path.is_symlink() and path.resolve().is_relative_to((root / self.prefix).resolve())

    def find(self, relative: str) -> StoredFile | None:
        """The stored file at a relative path, or None (a name that is not one of the run's files)."""
        return next((f for f in self.files() if f.path == relative), None)

    def folder(self, relative: str) -> list[StoredFile]:
        """The stored files under a folder of the run (its model, a checkpoint step)."""
        prefix = relative.strip("/") + "/"
        return [f for f in self.files() if f.path.startswith(prefix)]

    def stored_checkpoints(self) -> list[int]:
        """The checkpoint steps stored completely, oldest first."""
        keys = object_store.list_keys(self.store, self.key(MANIFESTS_DIR), self.retry)
        return sorted(int(m.group(1)) for m in (_CHECKPOINT_MANIFEST.match(k["path"].rsplit("/", 1)[-1])
                                                 for k in keys) if m)

    def restore_latest_checkpoint(self, run_dir: Path) -> Restored:
        """Fetch the newest stored checkpoint that passes its checks into the scratch folder; a step whose
        files do not match their checksums is refused (said in `refused`) and the one before it tried."""
        restored = Restored()
        manifests = self._manifests()
        if manifests is None:
            return restored
        for step in sorted(manifests[1], reverse=True):
            target = run_dir / CHECKPOINTS_DIR / str(step)
            staging = run_dir / CHECKPOINTS_DIR / f"{step}.restoring"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                companions = []
                for item in self._entries(manifests[1][step]["files"]):
                    if item.path in RESUME_COMPANIONS:
                        companions.append(item)
                        continue
                    inside = Path(item.path).relative_to(f"{CHECKPOINTS_DIR}/{step}")
                    object_store.download(self.store, item.entry, staging / inside, self.retry)
                for item in companions:
                    object_store.download(self.store, item.entry, run_dir / item.path, self.retry)
            except (object_store.IntegrityError, object_store.NotFoundError, ValueError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                restored.refused.append(f"the stored checkpoint at step {step} was refused: {exc}")
                continue
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            restored.step = step
            break
        return restored

    def sign(self, item: StoredFile) -> str | None:
        """A presigned URL for a file, when the store can sign (a bucket) and presigning is on."""
        if not (self.settings.presign and object_store.is_object_store(self.location)):
            return None
        return object_store.sign_get(self.store, item.entry.key, self.settings.presign_seconds)


def run_store(settings: StoreSettings, location: str | None, run_id: Any, **kwargs: Any) -> RunStore:
    """The run's files where it recorded them (the configured store for a run that recorded none)."""
    return RunStore(settings, location or settings.url, run_id, **kwargs)


def steps_in(folder: Path) -> list[int]:
    """The finished checkpoint steps of a local checkpoints folder (a step being written has another name)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and _STEP.match(p.name))
