"""Serving a run's stored files, for its page and the API alike: a file (Range requests, or a presigned
URL of the bucket), a folder as a zip made as it streams, and the listing the API returns."""
from __future__ import annotations

import mimetypes
from typing import Any

from flask import Response, current_app, request, stream_with_context

from app.artifacts import store as object_store
from app.artifacts.run_store import RunStore, StoredFile
from app.artifacts.store import IntegrityError, StoreError, UnsafeKey, shown_location
from app.errors import NotFoundError, StoredFileCorrupted, StoreUnreachable
from app.models import TunixRun
from app.runs import artifacts


def _unreachable(exc: StoreError) -> StoreUnreachable:
    return StoreUnreachable(f"The artifact store did not answer: {exc}")


def _corrupted(what: str, exc: IntegrityError) -> StoredFileCorrupted:
    return StoredFileCorrupted(f"Not served: {what} in the store is not what this run stored ({exc}). "
                               "It may have been damaged or overwritten in the bucket.")


def _stored(run: TunixRun, relative: str) -> tuple[RunStore, StoredFile]:
    """The run's store and the stored file a download names; 404 for a name that is not one of its files."""
    files = artifacts.of_run(run, current_app.config)
    folded = artifacts.normalized(relative)
    try:
        item = files.find(folded) if folded else None
    except UnsafeKey:
        item = None
    except StoreError as exc:
        raise _unreachable(exc) from exc
    if item is None:
        raise NotFoundError("No such file in this run's artifacts.")
    return files, item


def file_response(run: TunixRun, relative: str) -> Response:
    """A stored file, checked against what its run recorded, then streamed from the store (Range requests
    too) or, with TUNIX_ARTIFACTS_PRESIGN=1, handed to a short-lived presigned URL of the bucket."""
    files, item = _stored(run, relative)
    try:
        object_store.verify_current(files.store, item.entry, files.retry)
        signed = files.sign(item)
    except IntegrityError as exc:
        raise _corrupted(item.path, exc) from exc
    except StoreError as exc:
        raise _unreachable(exc) from exc
    if signed is not None:
        return Response(status=302, headers={"Location": signed})
    etag = item.entry.sha256
    start, stop, status = 0, item.size_bytes, 200
    wanted = request.range
    if wanted is not None and request.if_range.etag and request.if_range.etag != etag:
        wanted = None  # If-Range names another version: the whole file
    headers = {"Accept-Ranges": "bytes",
               "Content-Disposition": f'attachment; filename="{artifacts.download_name(item.path)}"'}
    if etag:
        headers["ETag"] = f'"{etag}"'
    if wanted is not None:
        bounds = wanted.range_for_length(item.size_bytes)
        if bounds is None:
            return Response(status=416, headers={**headers, "Content-Range": f"bytes */{item.size_bytes}"})
        (start, stop), status = bounds, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{item.size_bytes}"
    headers["Content-Length"] = str(stop - start)
    body = object_store.stream(files.store, item.entry, start, stop)
    return Response(stream_with_context(body), status=status, headers=headers,
                    mimetype=mimetypes.guess_type(item.path)[0] or "application/octet-stream",
                    direct_passthrough=True)


def folder_response(run: TunixRun, folder: str) -> Response:
    """A folder of the run (its model, a checkpoint step) as one zip archive, made from the store as it
    streams; every file is checked against its manifest before the archive starts."""
    files = artifacts.of_run(run, current_app.config)
    folded = artifacts.normalized(folder)
    try:
        inside = files.folder(folded) if folded else []
        if not inside:
            raise NotFoundError("No such folder in this run's artifacts.")
        for item in inside:
            object_store.verify_current(files.store, item.entry, files.retry)
    except IntegrityError as exc:
        raise _corrupted(folded, exc) from exc
    except StoreError as exc:
        raise _unreachable(exc) from exc
    name = artifacts.archive_name(run.id, folded)
    return Response(stream_with_context(artifacts.stream_zip(files, inside, folded, name)), mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}.zip"'})


def listing(run: TunixRun) -> dict[str, Any]:
    """The run's stored files as the API lists them: path, size and SHA-256 of each."""
    files = artifacts.of_run(run, current_app.config)
    try:
        stored = files.files()
    except StoreError as exc:
        raise _unreachable(exc) from exc
    return {"run_id": str(run.id), "status": run.status,
            "artifacts_url": shown_location(files.location),
            "total_bytes": sum(f.size_bytes for f in stored),
            "files": [{"path": f.path, "size_bytes": f.size_bytes, "sha256": f.entry.sha256} for f in stored]}
