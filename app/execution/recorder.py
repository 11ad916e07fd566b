"""Recording a running run: its progress, metric series and output, written while it runs."""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import InterfaceError, OperationalError

from app import instruments
from app.contract import progress_protocol
from app.extensions import db
from app.models import RunChart, RunLogChunk, RunMetric, TunixRun
from app.runs import chart_series

log = logging.getLogger(__name__)

_EMPTY_JSON = text("'{}'::jsonb")
RATE_WINDOW_STEPS = 20  # the page's tokens/s is the mean over this many recent steps
LOG_NOTICE = "[... output beyond TUNIX_LOG_MAX_BYTES ({limit} bytes) is not stored here; the run directory has it ...]\n"


class ProgressRecorder:
    """Stores a running run's progress events, metric series and output while it runs.

    Ordinary steps and output are batched and flushed at most every `flush_seconds`, so a
    trainer that prints thousands of lines a second costs one small transaction a second;
    the rare events (start, the first step, eval, checkpoint) are written at once. Stored
    output stops at `log_max_bytes` per run. A database outage only delays the writes.
    """

    def __init__(self, run_id: uuid.UUID, flush_seconds: float = 1.0, log_max_bytes: int = 5 * 1024 * 1024):
        self._clock = time.monotonic
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self.log_max_bytes = log_max_bytes
        self._points: dict[tuple[str, int], dict[str, Any]] = {}
        self._progress: dict[str, Any] = {}
        self._output: list[tuple[str, str]] = []
        self._log_bytes = 0
        self._log_capped = False
        self._next_seq: int | None = None
        self._last_flush = self._clock()
        self._recent_rates: deque[float] = deque(maxlen=RATE_WINDOW_STEPS)
        self._recent_steps: deque[tuple[int, float]] = deque(maxlen=RATE_WINDOW_STEPS + 1)  # (step, elapsed)
        self._chart: dict[str, Any] | None = None  # loaded from its row at the first write (a retry continues it)
        self._pending_chart: dict[str, Any] | None = None  # what the chart becomes once the write commits

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        point = progress_protocol.metric_point(event)
        if point is not None:
            self._points[(point["split"], point["step"])] = point
        if kind == "phase" and event.get("name") in progress_protocol.PHASES:
            self._progress.update(phase=event["name"])
        elif kind == "start":
            self._progress.update(total_steps=event.get("total_steps"), started=True)
        elif kind == "step":
            rate = progress_protocol.finite(event.get("tokens_per_second"))
            elapsed = progress_protocol.finite(event.get("elapsed_seconds"))
            if event.get("step") != 1:  # the first step also traces and compiles: it is no pace
                if rate is not None:
                    self._recent_rates.append(rate)
                if isinstance(event.get("step"), int) and elapsed is not None:
                    self._recent_steps.append((event["step"], elapsed))
            self._progress.update(step=event.get("step"), loss=event.get("loss"), elapsed_seconds=elapsed,
                                  tokens_per_second=(round(sum(self._recent_rates) / len(self._recent_rates), 1)
                                                     if self._recent_rates else None),
                                  seconds_per_step=self._steady_pace())
        elif kind == "eval":
            self._progress.update(eval_loss=event.get("loss"), eval_step=event.get("step"))
        elif kind == "checkpoint":
            self._progress.update(last_checkpoint_step=event.get("step"))
        elif kind == "evaluate" and event.get("phase") in ("before", "after"):
            self._progress.update(evaluating={"phase": event["phase"], "done": event.get("done"),
                                              "total": event.get("total")})
            if isinstance(event.get("metrics"), dict):
                self._progress[f"evaluation_{event['phase']}"] = event["metrics"]
        if kind in ("phase", "start", "eval", "checkpoint") or (kind == "step" and event.get("step") == 1) or (
                kind == "evaluate" and (event.get("done") == 0 or "metrics" in event)):
            self.flush()

    def update_progress(self, **fields: Any) -> None:
        """Progress of the platform's own (storing files, a resume), written at once."""
        self._progress.update(fields)
        self.flush()

    def _steady_pace(self) -> float | None:
        """Seconds per step over the recent steps, the compiling first step left out; None before two."""
        if len(self._recent_steps) < 2:
            return None
        (first, start), (last, end) = self._recent_steps[0], self._recent_steps[-1]
        return round((end - start) / (last - first), 4) if last > first and end >= start else None

    def on_output(self, stream: str, data: bytes) -> None:
        if self._log_capped:
            return
        text_ = data.decode("utf-8", errors="replace")
        size = len(text_.encode())
        if self._log_bytes + size > self.log_max_bytes:
            self._log_capped = True
            text_ = LOG_NOTICE.format(limit=self.log_max_bytes)
            size = len(text_)
        self._log_bytes += size
        if self._output and self._output[-1][0] == stream:
            self._output[-1] = (stream, self._output[-1][1] + text_)
        else:
            self._output.append((stream, text_))

    def on_tick(self) -> None:
        if self._clock() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> bool:
        """Write what is buffered; False (keeping the buffer) when the database is unreachable."""
        self._last_flush = self._clock()
        if not self._points and not self._progress and not self._output:
            return True
        try:
            self._write()
        except (OperationalError, InterfaceError) as exc:
            db.session.rollback()
            self._pending_chart = None
            log.warning("run %s: progress not stored yet (%s); will retry", self.run_id, type(exc).__name__)
            return False
        self._points.clear()
        self._output.clear()
        return True

    def _write_chart(self, points: list[dict[str, Any]]) -> None:
        if self._chart is None:
            stored = db.session.scalar(select(RunChart.series).where(RunChart.run_id == self.run_id))
            self._chart = stored if isinstance(stored, dict) else chart_series.empty()
        chart = json.loads(json.dumps(self._chart))  # kept unchanged in memory until the write commits
        for point in sorted(points, key=lambda p: (p["split"], p["step"])):
            chart_series.add(chart, point["split"], point["step"], point["loss"])
        stmt = pg_insert(RunChart).values(run_id=self.run_id, series=chart, version=1)
        db.session.execute(stmt.on_conflict_do_update(index_elements=["run_id"], set_={
            "series": stmt.excluded.series, "version": RunChart.version + 1}))
        self._pending_chart = chart

    def _write(self) -> None:
        points, progress = list(self._points.values()), dict(self._progress)
        with instruments.timed_db_write("record_progress"):
            if points:
                stmt = pg_insert(RunMetric).values([{"run_id": self.run_id, **p} for p in points])
                stmt = stmt.on_conflict_do_update(
                    index_elements=["run_id", "split", "step"],
                    set_={"loss": stmt.excluded.loss, "learning_rate": stmt.excluded.learning_rate,
                          "tokens_per_second": stmt.excluded.tokens_per_second})
                db.session.execute(stmt)
                self._write_chart(points)
            # Every write here changes what the run's page shows: bump the version its poll validates by.
            changes: dict[str, Any] = {"version": TunixRun.version + 1}
            if progress:
                changes["progress"] = func.coalesce(TunixRun.progress, _EMPTY_JSON).op("||")(progress)
            if self._output:
                if self._next_seq is None:  # a re-queued run continues the log of its earlier attempt
                    self._next_seq = (db.session.scalar(select(func.max(RunLogChunk.seq))
                                                        .where(RunLogChunk.run_id == self.run_id)) or 0) + 1
                rows = [{"run_id": self.run_id, "seq": self._next_seq + i, "stream": stream, "text": chunk}
                        for i, (stream, chunk) in enumerate(self._output)]
                db.session.execute(pg_insert(RunLogChunk).values(rows))
                changes["log_bytes"] = TunixRun.log_bytes + sum(len(chunk.encode()) for _, chunk in self._output)
            db.session.execute(update(TunixRun).where(TunixRun.id == self.run_id).values(**changes))
            db.session.commit()
        if self._output:
            self._next_seq += len(self._output)
        if self._pending_chart is not None:
            self._chart, self._pending_chart = self._pending_chart, None
