"""Reading a run's stored output: the tail for the page, increments for the poll, the whole for download."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import func, select

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
    return after(run_id, 0, max_lines)


def after(run_id: uuid.UUID, seq: int, max_lines: int) -> LogSlice:
    """Lines stored after chunk `seq`, at most `max_lines` of the newest of them.

    Read newest first and stopped at `max_lines` chunks (each holds a line or more), so a reader
    far behind costs what it is shown, not the whole history it missed.
    """
    chunks = list(db.session.scalars(select(RunLogChunk).where(RunLogChunk.run_id == run_id, RunLogChunk.seq > seq)
                                     .order_by(RunLogChunk.seq.desc())
                                     .limit(max(1, min(MAX_CHUNKS_PER_READ, max_lines)))))
    chunks.reverse()
    return LogSlice(_split(chunks)[-max_lines:], chunks[-1].seq if chunks else seq)


def last_seq(run_id: uuid.UUID) -> int:
    """The newest chunk's number (0 before any output): where a poll starts reading from."""
    return db.session.scalar(select(func.max(RunLogChunk.seq)).where(RunLogChunk.run_id == run_id)) or 0


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
