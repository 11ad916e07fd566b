"""Storing a run's files from its scratch folder: every checkpoint once the trainer has finished it,
while it trains; the rest when it ends; and, before a re-queued run starts, its last stored checkpoint.

The uploads run on threads of their own; the execution's thread keeps ticking meanwhile (the lease,
a cancel, the storing progress on the page) through `while_ticking`.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, TypeVar

from app.artifacts.run_store import RunStore, StoringProgress, steps_in
from app.artifacts.store import StoreError
from app.contract.run_files import CHECKPOINTS_DIR

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_SECONDS = 0.5


class CheckpointUploader:
    """Stores each checkpoint step of the scratch folder once the trainer has finished writing it (Orbax
    writes a step under a temporary name and renames it when done), keeping the newest two in the store."""

    def __init__(self, files: RunStore, run_dir: Path):
        self.files, self.run_dir = files, run_dir
        self.stored: set[int] = set()
        self.gone: set[int] = set()  # removed by the trainer before they were stored: a newer one supersedes them
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"checkpoints-{run_dir.name}", daemon=True)

    def start(self) -> "CheckpointUploader":
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.store_finished(StoringProgress())

    def pending(self) -> list[int]:
        return [s for s in steps_in(self.run_dir / CHECKPOINTS_DIR) if s not in self.stored and s not in self.gone]

    def store_finished(self, progress: StoringProgress) -> None:
        """Store every finished step not stored yet, oldest first; a store failure is kept in `error` (the
        next poll tries again, and the end of the run stores whatever is still missing)."""
        for step in self.pending():
            try:
                self.files.store_checkpoint(self.run_dir, step, progress)
            except FileNotFoundError:
                self.gone.add(step)
                continue
            except StoreError as exc:
                self.error = str(exc)
                log.warning("run %s: checkpoint %s not stored yet: %s", self.files.prefix, step, exc)
                return
            self.stored.add(step)
            self.error = None
            try:
                self.files.prune_checkpoints()
            except StoreError as exc:  # an older step left behind costs space, not correctness; gc takes it
                log.warning("run %s: older checkpoints not pruned: %s", self.files.prefix, exc)

    def stop(self) -> None:
        """Stop polling; returns once an upload under way has ended."""
        self._stop.set()
        self._thread.join()


def while_ticking(work: Callable[[], T], on_tick: Callable[[], object], stop: threading.Event,
                  tick_seconds: float = 0.25) -> T:
    """Run `work` on a thread while this one calls `on_tick` (which sets `stop` to give up); returns what
    `work` returned, or raises what it raised."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="storing", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(tick_seconds)
        if thread.is_alive() and not stop.is_set():
            on_tick()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def files_at_end(uploader: CheckpointUploader, files: RunStore, run_dir: Path, progress: StoringProgress) -> None:
    """The end of a run: the checkpoints not stored yet, then every other file, then the manifest. Raises
    StoreError (StoreUnavailable after the retry budget) when they cannot all be stored."""
    final = files.final_files(run_dir)

    def plan() -> None:
        steps = [run_dir / CHECKPOINTS_DIR / str(s) for s in uploader.pending()]
        progress.set_plan([p.stat().st_size for d in steps for p in d.rglob("*") if p.is_file()]
                          + [(run_dir / r).stat().st_size for r in final])

    plan()  # shown at once, even while a checkpoint upload under way is retried through an outage
    uploader.stop()
    plan()
    uploader.store_finished(progress)
    if uploader.error:
        raise StoreError(uploader.error)
    files.store_final(run_dir, final, progress)
