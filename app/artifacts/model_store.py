"""Registered models' files in the store: blobs named by their SHA-256 under `registry/sha256/`, shared by
every version that holds the same bytes. A version is its list of files (path, size, SHA-256) and the
digest of that list; nothing in the store is ever rewritten, so a version cannot change under a name."""
from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from app.artifacts import store as object_store
from app.artifacts.run_store import RunStore, StoredFile
from app.artifacts.store import Retrier, StoredObject, StoreSettings, UnsafeKey
from app.contract.model_catalog import MAX_HEADER_BYTES

BLOBS = "registry/sha256"
ADAPTER_PREFIX = "adapter/"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def blob_key(sha256: str) -> str:
    if not _SHA256.match(sha256 or ""):
        raise UnsafeKey(f"not a SHA-256: {sha256!r}")
    return object_store.join_key(BLOBS, sha256[:2], sha256)


def digest_of(files: Sequence[dict[str, Any]]) -> str:
    """A file set's digest: the SHA-256 of one line per file (path, size, SHA-256), in path order."""
    lines = "".join(f"{f['path']}\t{int(f['size'])}\t{f['sha256']}\n" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(lines.encode()).hexdigest()


class ModelStore:
    """The registry's blobs in the store at `location`."""

    def __init__(self, settings: StoreSettings, location: str, *,
                 should_stop: Callable[[], bool] | None = None):
        self.location = location
        self.store = object_store.open_store(settings, location)
        self.retry = Retrier(replace(settings, url=location), should_stop=should_stop)

    def entry(self, file: dict[str, Any]) -> StoredObject:
        return StoredObject(blob_key(file["sha256"]), int(file["size"]), file["sha256"])

    def bring_in(self, source: RunStore, item: StoredFile) -> None:
        """Copy one of a run's files into the registry, unless a blob of its SHA-256 is there already."""
        key = blob_key(item.entry.sha256)
        try:
            if object_store.head(self.store, key, self.retry)["size"] == item.entry.size:
                return
        except FileNotFoundError:  # obstore's NotFoundError is one too
            pass
        object_store.copy_object(source.store, item.entry, self.store, key, self.retry,
                                 same_store=source.location == self.location)

    def fetch(self, files: Sequence[dict[str, Any]], destination: Path) -> None:
        """Download a version's files into a folder, each checked against its SHA-256 (IntegrityError)."""
        for file in files:
            relative = object_store.join_key(file["path"])
            object_store.download(self.store, self.entry(file), destination / relative, self.retry)

    def fetch_for_planning(self, files: Sequence[dict[str, Any]], destination: Path) -> None:
        """What a plan reads of a version, without its weights: every file of the model but the adapter's, the
        *.safetensors cut to their headers (their tensors' names, dtypes and shapes)."""
        for file in files:
            if file["path"].startswith(ADAPTER_PREFIX):
                continue
            target = destination / object_store.join_key(file["path"])
            entry = self.entry(file)
            if not file["path"].endswith(".safetensors"):
                object_store.download(self.store, entry, target, self.retry)
                continue
            prefix = b"".join(object_store.stream(self.store, entry, 0, min(8, entry.size)))
            size = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            header = b"".join(object_store.stream(self.store, entry, 8, 8 + size)) \
                if 0 < size <= MAX_HEADER_BYTES and 8 + size <= entry.size else b""
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(prefix + header)

    def stream(self, file: dict[str, Any]) -> Iterator[bytes]:
        """One file's bytes, checked against its SHA-256 as they go."""
        return object_store.stream(self.store, self.entry(file))
