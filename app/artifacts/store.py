"""The artifact store: a local folder or a bucket (S3 and S3-compatible servers, Google Cloud Storage),
reached through obstore. It knows objects, not runs: keys, checked writes, verified reads, retries.

obstore is one library for every backend (a Rust core, no botocore), with multipart uploads, ranged and
streamed reads, presigned URLs and retries of its own. Around each call this module adds a retry budget
(`TUNIX_ARTIFACTS_RETRY_SECONDS`) that outlasts a short outage of the store, and the integrity checks:
a written object's size, its ETag against the MD5 of the file's bytes (S3, whose ETag is that MD5, per
part for a multipart upload), and every byte read back against the SHA-256 recorded when it was stored.
"""
from __future__ import annotations

import hashlib
import io
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlparse

import obstore
from obstore.exceptions import NotFoundError, PreconditionError

from app import instruments

log = logging.getLogger(__name__)

T = TypeVar("T")
READ_CHUNK = 1024 * 1024  # what a web response sends at a time
DOWNLOAD_CHUNK = 8 * 1024 * 1024  # what a worker writes to its scratch folder at a time
PART_SIZE = 8 * 1024 * 1024  # multipart part size (S3 wants every part but the last to be 5 MB or more)
UPLOAD_CONCURRENCY = 8
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})(-\d+)?"?$')
_SAFE_SEGMENT = re.compile(r"^[^\x00-\x1f\x7f\\]+$")


class StoreError(RuntimeError):
    """An operation on the store failed; the kinds below say how."""


class StoreUnavailable(StoreError):
    """The store could not be reached (or kept failing) for the whole retry budget."""


class StoreStopped(StoreError):
    """The caller stopped the operation (its run was cancelled, its lease lost, its grace spent)."""


class UploadMismatch(StoreError):
    """An upload's check found the stored object unlike the file sent; the upload is tried again."""


class IntegrityError(StoreError):
    """A stored object is not the one that was recorded: its size, ETag or SHA-256 differs."""

    def __init__(self, message: str):
        super().__init__(message)
        instruments.ARTIFACT_REFUSED.inc()


class UnsafeKey(ValueError):
    """A relative name that would leave its prefix or cannot be a key."""


@dataclass(frozen=True)
class StoreSettings:
    """How the store is reached; built from the app config."""

    url: str
    s3_endpoint_url: str = ""
    retry_seconds: float = 300.0
    presign: bool = False
    presign_seconds: int = 300
    check_etag: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "StoreSettings":
        return cls(url=location_of(config), s3_endpoint_url=str(config.get("S3_ENDPOINT_URL") or ""),
                   retry_seconds=float(config.get("ARTIFACTS_RETRY_SECONDS", 300.0)),
                   presign=bool(config.get("ARTIFACTS_PRESIGN")),
                   presign_seconds=int(config.get("ARTIFACTS_PRESIGN_SECONDS", 300)),
                   check_etag=bool(config.get("ARTIFACTS_CHECK_ETAG", True)))


@dataclass(frozen=True)
class StoredObject:
    """One stored file as its manifest records it: key relative to the store's root, size, SHA-256, ETag."""

    key: str
    size: int
    sha256: str | None = None  # None for files stored before manifests existed
    etag: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "etag": self.etag}


def location_of(config: Mapping[str, Any]) -> str:
    """Where new runs' files go: TUNIX_ARTIFACTS_URL, else the local artifacts root (as an absolute path)."""
    url = str(config.get("ARTIFACTS_URL") or "").strip()
    if url and is_object_store(url):
        return url.rstrip("/")
    return str(local_path(url or str(config["ARTIFACTS_ROOT"])))


def shown_location(url: str | None) -> str | None:
    """A store's address as users may see it: a bucket's URL; None for a server's own folder."""
    return url if url and is_object_store(url) else None


def is_object_store(url: str) -> bool:
    """True for a bucket URL (s3://, gs://), False for a local folder."""
    return urlparse(url).scheme in ("s3", "gs")


def describe(url: str) -> str:
    """The store's address as the page and messages show it (a local folder as its path)."""
    return url if is_object_store(url) else str(local_path(url))


def local_path(url: str) -> Path:
    parsed = urlparse(url)
    return Path(parsed.path if parsed.scheme == "file" else url).expanduser().resolve()


def join_key(*parts: str) -> str:
    """Keys joined with '/', each part checked: no '..', no empty or control-character segment, no backslash."""
    segments: list[str] = []
    for part in parts:
        for segment in str(part).split("/"):
            if segment in ("", ".", "..") or not _SAFE_SEGMENT.match(segment):
                raise UnsafeKey(f"not a safe artifact name: {part!r}")
            segments.append(segment)
    return "/".join(segments)


_stores: dict[tuple[str, str], Any] = {}
_stores_lock = threading.Lock()


def _inner_retries() -> dict[str, Any]:
    # obstore retries a failed request briefly itself; the budget around each call is ours.
    return {"max_retries": 2, "retry_timeout": timedelta(seconds=10),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1)}}


def open_store(settings: StoreSettings, url: str | None = None):
    """The obstore store for `url` (default: the configured one), made once per process and reused."""
    url = url or settings.url
    key = (url, settings.s3_endpoint_url)
    with _stores_lock:
        if key not in _stores:
            _stores[key] = _build_store(url, settings)
        return _stores[key]


def _build_store(url: str, settings: StoreSettings):
    from obstore.store import LocalStore, from_url

    if not is_object_store(url):
        return LocalStore(local_path(url), mkdir=True)
    client_options: dict[str, Any] = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=120)}
    config: dict[str, Any] = {}
    if urlparse(url).scheme == "s3" and settings.s3_endpoint_url:
        config["endpoint"] = settings.s3_endpoint_url
        client_options["allow_http"] = settings.s3_endpoint_url.startswith("http://")
    return from_url(url, config=config or None, client_options=client_options, retry_config=_inner_retries())


class Retrier:
    """Runs a store operation again, with exponential backoff, until it succeeds or the budget is spent.

    `on_retry(attempt, error)` is told of each failure that will be retried (the page says so)."""

    def __init__(self, settings: StoreSettings, on_retry: Callable[[int, Exception], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.settings, self.on_retry, self.should_stop = settings, on_retry, should_stop

    def __call__(self, operation: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + self.settings.retry_seconds
        delay, attempt = 0.25, 0
        while True:
            attempt += 1
            if self.should_stop is not None and self.should_stop():
                raise StoreStopped(f"stopped before {what}")
            try:
                return operation()
            except (NotFoundError, PreconditionError, StoreStopped, IntegrityError, UnsafeKey, FileNotFoundError):
                raise
            except Exception as exc:  # obstore raises its own types per backend: any other failure may pass
                if time.monotonic() + delay > deadline or (self.should_stop and self.should_stop()):
                    instruments.ARTIFACT_GIVEN_UP.inc()
                    raise StoreUnavailable(
                        f"the artifact store ({describe(self.settings.url)}) was unreachable or failing for "
                        f"{self.settings.retry_seconds:g} s while {what} ({attempt} tries; last error: "
                        f"{_short(exc)})") from exc
                log.warning("artifact store: %s failed (try %d: %s); retrying in %.1f s", what, attempt,
                            _short(exc), delay)
                instruments.ARTIFACT_RETRIES.inc()
                if self.on_retry is not None:
                    self.on_retry(attempt, exc)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


class _FileSums:
    """SHA-256 of a whole file and MD5 of each multipart part, read from disk on a thread of its own while the
    upload reads the file too: hashlib lets go of the GIL, so the sums cost next to no upload time."""

    def __init__(self, path: Path):
        self.path = path
        self.sha256 = hashlib.sha256()
        self.part_md5s: list[bytes] = []
        self.size = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="file-sums", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self.path.open("rb") as source:
                while block := source.read(PART_SIZE):
                    self.sha256.update(block)
                    self.part_md5s.append(hashlib.md5(block).digest())
                    self.size += len(block)
            if not self.part_md5s:
                self.part_md5s.append(hashlib.md5(b"").digest())
        except BaseException as exc:  # handed to the uploading thread by done()
            self.error = exc

    def done(self) -> "_FileSums":
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self

    def expected_etag(self, multipart: bool) -> str:
        if not multipart:
            return self.part_md5s[0].hex()
        return f"{hashlib.md5(b''.join(self.part_md5s)).hexdigest()}-{len(self.part_md5s)}"


class _CountedFile(io.RawIOBase):
    """A local file as the upload reads it, counting the bytes read for the page's progress."""

    def __init__(self, path: Path, on_bytes: Callable[[int], None] | None):
        self._file = path.open("rb")
        self.on_bytes = on_bytes
        self.count = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.count += len(data)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def put_file(store, settings: StoreSettings, key: str, path: Path, retry: Retrier,
             on_bytes: Callable[[int], None] | None = None) -> StoredObject:
    """Upload a local file (multipart above one part), then check it: its size, and on S3 its ETag against
    the MD5 of the file's bytes. A failed check is retried like an outage; the object is returned as stored."""
    size = path.stat().st_size
    multipart = size > PART_SIZE

    def attempt() -> StoredObject:
        sums = _FileSums(path)
        sent = _CountedFile(path, on_bytes)
        try:
            if multipart:
                result = obstore.put(store, key, sent, chunk_size=PART_SIZE, max_concurrency=UPLOAD_CONCURRENCY)
            else:
                result = obstore.put(store, key, sent.read(), use_multipart=False)
        except BaseException:
            if on_bytes is not None and sent.count:
                on_bytes(-sent.count)  # what this try counted is sent again by the next
            raise
        finally:
            sent.close()
            sums.done()
        meta = obstore.head(store, key)
        problem = None
        if meta["size"] != sums.size or sums.size != size:
            problem = f"{meta['size']} bytes stored of {sums.size} read ({size} when the upload began)"
        elif settings.check_etag and settings.url.startswith("s3://"):
            etag = (result.get("e_tag") or "").strip('"')
            expected = sums.expected_etag(multipart)
            if _MD5_ETAG.match(etag) and etag != expected:
                problem = f"ETag {etag} where the file's bytes give {expected}"
        if problem:
            if on_bytes is not None:
                on_bytes(-sent.count)
            raise UploadMismatch(f"{key}: the stored object does not match the file ({problem})")
        instruments.ARTIFACT_BYTES.labels(direction="upload").inc(sums.size)
        return StoredObject(key, sums.size, sums.sha256.hexdigest(), meta.get("e_tag") or result.get("e_tag"))

    return retry(attempt, f"storing {key}")


def put_bytes(store, key: str, data: bytes, retry: Retrier) -> StoredObject:
    """A small object (a manifest, a log), written whole and atomically."""
    result = retry(lambda: obstore.put(store, key, data, use_multipart=False), f"storing {key}")
    return StoredObject(key, len(data), hashlib.sha256(data).hexdigest(), result.get("e_tag"))


def get_bytes(store, key: str, retry: Retrier) -> bytes:
    return retry(lambda: bytes(obstore.get(store, key).bytes()), f"reading {key}")


def list_keys(store, prefix: str, retry: Retrier) -> list[dict[str, Any]]:
    """Every object under a prefix (its path, size and ETag)."""
    def listing() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for batch in obstore.list(store, prefix=prefix):
            found.extend(batch)
        return found

    return retry(listing, f"listing {prefix}")


def head(store, key: str, retry: Retrier) -> dict[str, Any]:
    return retry(lambda: obstore.head(store, key), f"reading {key}")


def delete_keys(store, keys: list[str], retry: Retrier) -> None:
    for start in range(0, len(keys), 500):
        batch = keys[start:start + 500]
        retry(lambda: obstore.delete(store, batch), f"deleting {len(batch)} objects")


def verify_current(store, entry: StoredObject, retry: Retrier) -> dict[str, Any]:
    """The object's metadata, checked against its manifest entry without reading it: same size and, where
    one was recorded, the same ETag (any overwrite changes it). IntegrityError otherwise."""
    meta = head(store, entry.key, retry)
    if meta["size"] != entry.size:
        raise IntegrityError(f"{entry.key} holds {meta['size']} bytes where {entry.size} were stored")
    if entry.etag and meta.get("e_tag") and meta["e_tag"] != entry.etag:
        raise IntegrityError(f"{entry.key} was changed after it was stored (ETag {meta['e_tag']}, "
                             f"stored {entry.etag})")
    return meta


def _read(store, entry: StoredObject, start: int, end: int, chunk_size: int):
    """The object's bytes [start, end) as obstore's chunks; IntegrityError when it changed since it was stored."""
    options: dict[str, Any] = {"range": (start, end)} if (start, end) != (0, entry.size) else {}
    if entry.etag:
        options["if_match"] = entry.etag
    try:
        result = obstore.get(store, entry.key, options=options or None)
    except PreconditionError as exc:
        raise IntegrityError(f"{entry.key} was changed after it was stored (its ETag is no longer "
                             f"{entry.etag})") from exc
    return result.stream(min_chunk_size=chunk_size)


def stream(store, entry: StoredObject, start: int = 0, end: int | None = None, *,
           verify_sha256: bool = True) -> Iterator[bytes]:
    """The object's bytes [start, end) in chunks of about a megabyte. A whole read is checked against its
    SHA-256 as it goes and its last chunk is held back until the sum matches: when it does not, the read
    ends with IntegrityError short of the object's size, so no reader takes it for whole."""
    end = entry.size if end is None else end
    if end <= start:
        return
    result = _read(store, entry, start, end, READ_CHUNK)
    digest = hashlib.sha256() if verify_sha256 and entry.sha256 and start == 0 and end == entry.size else None
    held = None  # the last chunk waits for the checksum: a damaged file never arrives whole
    for chunk in result:
        data = bytes(chunk)
        instruments.ARTIFACT_BYTES.labels(direction="download").inc(len(data))
        if digest is None:
            yield data
            continue
        digest.update(data)
        if held is not None:
            yield held
        held = data
    if digest is not None:
        if digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.key}: SHA-256 {digest.hexdigest()} where {entry.sha256} was stored")
        if held is not None:
            yield held


def download(store, entry: StoredObject, destination: Path, retry: Retrier) -> None:
    """Fetch an object to a local file, checked against its SHA-256 before the file takes its name. The sum
    is taken on a thread of its own while the next chunk arrives and this one is written."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")

    def attempt() -> None:
        digest = hashlib.sha256()
        chunks: queue.Queue = queue.Queue(maxsize=4)

        def take_sums() -> None:
            while (chunk := chunks.get()) is not None:
                digest.update(chunk)

        summer = threading.Thread(target=take_sums, name="download-sums", daemon=True)
        summer.start()
        try:
            with partial.open("wb") as out:
                for chunk in _read(store, entry, 0, entry.size, DOWNLOAD_CHUNK):
                    chunks.put(chunk)
                    out.write(chunk)
        finally:
            chunks.put(None)
            summer.join()
        if entry.sha256 and digest.hexdigest() != entry.sha256:
            raise IntegrityError(f"{entry.key}: SHA-256 {digest.hexdigest()} where {entry.sha256} was stored")
        instruments.ARTIFACT_BYTES.labels(direction="download").inc(entry.size)

    try:
        retry(attempt, f"fetching {entry.key}")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(destination)


def _relayed(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """The chunks of one store's read, produced on a thread of their own: obstore cannot read one store from
    inside the runtime that writes another. At most `depth` chunks wait between the two."""
    relay: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        relay.put(chunk, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            relay.put(done)
        except BaseException as exc:  # handed to the reading side
            relay.put(exc)

    threading.Thread(target=produce, name="store-relay", daemon=True).start()
    try:
        while (item := relay.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


SERVER_COPY_LIMIT = 5 * 1024**3  # S3's CopyObject copies at most 5 GB in one request


def copy_object(source, entry: StoredObject, target, key: str, retry: Retrier, *, same_store: bool) -> None:
    """Copy a stored object to `key`, checked: within one store the server copies it (after its size and ETag
    are checked against its manifest entry); across stores it streams through, a part at a time, every byte
    checked against the entry's SHA-256 before the upload completes. Memory stays flat either way."""
    if same_store and entry.size <= SERVER_COPY_LIMIT:
        verify_current(source, entry, retry)
        retry(lambda: obstore.copy(target, entry.key, key), f"copying {entry.key}")
    else:
        # A stream that fails its checksum raises before its last part: the upload is abandoned, never completed.
        retry(lambda: obstore.put(target, key, _relayed(stream(source, entry)), chunk_size=PART_SIZE,
                                  max_concurrency=UPLOAD_CONCURRENCY), f"copying {entry.key}")
    stored = head(target, key, retry)
    if stored["size"] != entry.size:
        raise IntegrityError(f"{key} holds {stored['size']} bytes after copying {entry.size}")
    instruments.ARTIFACT_BYTES.labels(direction="upload").inc(entry.size)


def sign_get(store, key: str, seconds: int) -> str:
    """A presigned GET URL for the object, good for `seconds`."""
    return obstore.sign(store, "GET", key, timedelta(seconds=seconds))
