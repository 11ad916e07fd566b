"""Reading a run's stored output: the tail for the page, increments for the poll, the whole for download."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import select

from app.extensions import db
from app.models import RunLogChunk

MAX_CHUNKS_PER_READ = 200


@dataclass
class LogSlice:
    lines: list[tuple[str, str]]  # (stream, line)
    last_seq: int  # pass as `after` to read on from here


def _split(chunks: list[RunLogChunk]) -> list[tuple[str, str]]:
    return [(chunk.stream, line) for chunk in chunks for line in chunk.text.splitlines()]


def tail(run_id: uuid.UUID, max_lines: int) -> LogSlice:
    """The last `max_lines` lines stored for a run."""
    chunks = list(db.session.scalars(select(RunLogChunk).where(RunLogChunk.run_id == run_id)
                                     .order_by(RunLogChunk.seq.desc()).limit(MAX_CHUNKS_PER_READ)))
    chunks.reverse()
    return LogSlice(_split(chunks)[-max_lines:], chunks[-1].seq if chunks else 0)


def after(run_id: uuid.UUID, seq: int, max_lines: int) -> LogSlice:
    """Lines stored after chunk `seq`, at most `max_lines` of the newest of them."""
    chunks = list(db.session.scalars(select(RunLogChunk).where(RunLogChunk.run_id == run_id, RunLogChunk.seq > seq)
                                     .order_by(RunLogChunk.seq).limit(MAX_CHUNKS_PER_READ)))
    return LogSlice(_split(chunks)[-max_lines:], chunks[-1].seq if chunks else seq)


def full_text(run_id: uuid.UUID) -> Iterator[str]:
    """The whole stored log, chunk by chunk, read in batches (for download)."""
    seq = 0
    while True:
        chunks = list(db.session.scalars(select(RunLogChunk).where(RunLogChunk.run_id == run_id,
                                                                   RunLogChunk.seq > seq)
                                         .order_by(RunLogChunk.seq).limit(MAX_CHUNKS_PER_READ)))
        if not chunks:
            return
        for chunk in chunks:
            yield chunk.text if chunk.stream == "stdout" else "".join(
                f"[stderr] {line}\n" for line in chunk.text.splitlines())
        seq = chunks[-1].seq
