"""Zip archives made as they are sent: each member read a chunk at a time, never held whole."""
from __future__ import annotations

import zipfile
from typing import Callable, Iterable, Iterator


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


def stream_zip(members: Iterable[tuple[str, Callable[[], Iterator[bytes]]]]) -> Iterator[bytes]:
    """A zip archive of (name in the archive, the member's chunks), stored uncompressed, as it is made."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, chunks in members:
            with archive.open(name, "w", force_zip64=True) as target:
                for chunk in chunks():
                    target.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
