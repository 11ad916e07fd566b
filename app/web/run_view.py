"""What the run page and its polling fragment show, computed once from the run (templates only print it).

Every value tolerates a partial progress record: the protocol allows any event to be the
last one stored (a start without a step, a run without an eval split), and each must render.
"""
from __future__ import annotations

import hashlib
import heapq
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

from flask import current_app
from markupsafe import Markup

from app.artifacts.store import StoreError, shown_location
from app.contract import scoring
from app.contract.progress_protocol import STORING, TRAINING
from app.models import TunixRun
from app.playground import service as playground
from app.queue import registry
from app.registry import gates, queries as registry_queries
from app.runs import artifacts, evaluation, logs, queries, service
from app.runs import progress as run_progress
from app.run_states import CANCELLED, CANCELLING, COMPLETED, FAILED, PENDING, RUNNING, TIMEOUT
from app.web import loss_chart
from app.web.formatting import format_bytes

STATUS_WORDS = {
    PENDING: "Waiting for a worker", RUNNING: "Running", CANCELLING: "Stopping", COMPLETED: "Completed",
    FAILED: "Failed", TIMEOUT: "Timed out", CANCELLED: "Cancelled",
}


def _number(mapping: dict[str, Any], key: str) -> float | None:
    value = mapping.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class ProgressView:
    """The progress line: every field may be missing, and then it is None."""

    step: int
    total_steps: int | None
    loss: float | None
    eval_loss: float | None
    eval_step: int | None  # the step the eval loss was measured at
    phase: str | None  # what the trainer is doing, in words, while the run is active
    training_seconds: float | None  # since the first step, while training
    time_left_seconds: float | None
    tokens_per_second: float | None  # smoothed while running; the run's own figure once it ended
    resumed_from_step: int | None = None  # the stored checkpoint a re-queued run started from

    @classmethod
    def of(cls, run: TunixRun) -> "ProgressView | None":
        progress = run.progress if isinstance(run.progress, dict) else {}
        total = _number(progress, "total_steps")
        if not total:
            return None
        result = run.result if isinstance(run.result, dict) else {}
        rate = _number(result, "tokens_per_second") if run.is_terminal else None
        phase = run_progress.phase_of(progress) if run.status == RUNNING else None
        eval_step = _number(progress, "eval_step")
        return cls(step=int(_number(progress, "step") or 0), total_steps=int(total),
                   loss=_number(progress, "loss"), eval_loss=_number(progress, "eval_loss"),
                   eval_step=None if eval_step is None else int(eval_step),
                   phase=_phase_words(phase, progress) if phase else None,
                   training_seconds=_number(progress, "elapsed_seconds") if phase == TRAINING else None,
                   time_left_seconds=run_progress.time_left_seconds(run.status, progress),
                   tokens_per_second=rate if rate is not None else _number(progress, "tokens_per_second"),
                   resumed_from_step=_whole(progress, "resumed_from_stored_step"))


def _whole(progress: dict[str, Any], key: str) -> int | None:
    value = _number(progress, key)
    return None if value is None else int(value)


def _phase_words(phase: str, progress: dict[str, Any]) -> str:
    """The phase in words; while the platform stores the run's files, how far it has come."""
    storing = progress.get("storing")
    if phase != STORING or not isinstance(storing, dict) or not storing.get("files_total"):
        return run_progress.PHASE_WORDS[phase]
    words = (f"Storing files: {int(storing.get('files_done') or 0)} of {int(storing['files_total'])}, "
             f"{format_bytes(storing.get('bytes_done') or 0)} of {format_bytes(storing.get('bytes_total') or 0)}")
    return words + (f" ({storing['retrying']})" if isinstance(storing.get("retrying"), str) else "")


SCORE_ROWS = (("answer_match", "Answer match", "rate"), ("exact_match", "Exact match", "rate"),
              ("mean_generated_tokens", "Mean answer length (tokens)", "number"),
              ("generation_tokens_per_second", "Generation tokens/s", "number"))
EXAMPLES_SHOWN = 20


@dataclass(frozen=True)
class Score:
    """One figure of one scoring pass, with what it rests on."""

    value: float
    examples: int | None  # how many answers it was measured on
    interval: tuple[float, float] | None  # 95 % interval of a rate
    includes_compilation: bool  # a tokens/s whose pass also compiled generation

    @property
    def matches(self) -> int | None:
        return None if self.examples is None else round(self.value * self.examples)

    @classmethod
    def of(cls, metrics: dict[str, Any] | None, key: str, kind: str, first_pass: bool) -> "Score | None":
        value = _number(metrics or {}, key)
        if value is None:
            return None
        examples = _number(metrics, "examples")
        examples = None if examples is None else int(examples)
        compiled = metrics.get("includes_compilation")
        return cls(value, examples, scoring.wilson_interval(value, examples or 0) if kind == "rate" else None,
                   key == "generation_tokens_per_second" and (compiled if isinstance(compiled, bool) else first_pass))


@dataclass(frozen=True)
class ScoresView:
    """Before → after scores, live while the run trains and final once it ended."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    evaluating: dict[str, Any] | None  # {"phase", "done", "total"} while a pass is under way
    examples: int | None
    dataset_key: str | None
    source: str | None
    error: str | None
    skipped: str | None
    asked: int | None = None  # eval_max_examples, when more were asked than the eval set holds

    @property
    def rows(self) -> list[tuple[str, str, str, Score | None, Score | None]]:
        return [(key, label, kind, Score.of(self.before, key, kind, True), Score.of(self.after, key, kind, False))
                for key, label, kind in SCORE_ROWS]

    @classmethod
    def of(cls, run: TunixRun) -> "ScoresView | None":
        if run.is_plan:
            return None
        progress = run.progress if isinstance(run.progress, dict) else {}
        final = evaluation.of(run.result)
        asked = (run.config or {}).get("eval_max_examples") if isinstance(run.config, dict) else None
        if final is not None:
            examples = final.get("examples")
            return cls(_mapping(final.get("before")), _mapping(final.get("after")), None, examples,
                       final.get("dataset_key"), final.get("source"), final.get("error"), final.get("skipped"),
                       asked if isinstance(asked, int) and isinstance(examples, int) and asked > examples else None)
        before, after = _mapping(progress.get("evaluation_before")), _mapping(progress.get("evaluation_after"))
        evaluating = _mapping(progress.get("evaluating")) if not run.is_terminal else None
        if evaluating and evaluating.get("done") == evaluating.get("total"):
            evaluating = None
        if not (before or after or evaluating):
            return None
        return cls(before, after, evaluating, None, None, None, None, None)


def _mapping(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _queue_estimate(position: int | None, workers: int) -> float | None:
    """Seconds until a pending run should start, counted from now; None when unknown.

    Each live worker frees up when its current run has run the typical time (an idle one, now); the
    runs ahead take the slots as they free up. So the figure counts down as the running runs go on,
    and once they take longer than usual it reaches 0 ("any moment now") instead of freezing."""
    if not position or workers == 0:
        return None
    typical = queries.typical_run_seconds(reuse_seconds=current_app.config["METRICS_CACHE_SECONDS"])
    if typical is None:
        return None
    now = time.time()
    started = queries.running_since(workers)
    slots = sorted(max(now, since + typical) for since in started) + [now] * (workers - len(started))
    heapq.heapify(slots)
    for _ in range(position - 1):  # the runs ahead, each in the first slot to free up
        heapq.heappush(slots, heapq.heappop(slots) + typical)
    return _coarse(slots[0] - now)


def _coarse(seconds: float) -> float:
    """A wait as precise as it can honestly be (and as often as the page shows it changing)."""
    step = 5 if seconds < 60 else 30 if seconds < 600 else 300
    return float(math.ceil(seconds / step) * step)


def _worker_note(quiet: float | None) -> str | None:
    """Why a pending run waits, when the reason is that no worker is around."""
    if quiet is None:
        return "No worker is running: start one with `python worker.py`."
    config = current_app.config
    if quiet > max(3 * config["HEARTBEAT_SECONDS"], 2 * config["WORKER_POLL_SECONDS"]):
        return f"No worker has been seen for {quiet:.0f} s."
    return None


def _size_note(devices: int, largest: int | None) -> str | None:
    """Why a run waits however short the queue: no live worker has as many devices as it asks for."""
    if largest is None or devices <= largest:
        return None
    return (f"It needs {devices} devices and the largest live worker has {largest}: it waits until a worker "
            f"with {devices} or more starts.")


@dataclass(frozen=True)
class Waiting:
    """What a pending run's block says about the queue."""

    position: queries.QueuePosition | None
    wait_seconds: float | None
    worker_note: str | None

    @classmethod
    def of(cls, run) -> "Waiting":
        position = queries.queue_position(run)
        if position is None:
            return cls(None, None, None)
        # Only a waiting run asks about the workers: one query for every answer.
        lease = current_app.config["LEASE_TIMEOUT_SECONDS"]
        quiet, alive = registry.worker_presence(lease)
        note = _worker_note(quiet) or _size_note(getattr(run, "devices", 1) or 1, registry.largest_live_worker(lease))
        return cls(position, _queue_estimate(position.position, alive), note)


class Drawn:
    """Markup drawn once and served again while its key holds; the oldest go first past `max_chars`."""

    def __init__(self, max_chars: int):
        self.max_chars, self._chars = max_chars, 0
        self._kept: OrderedDict[Hashable, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def keep(self, key: Hashable, markup: str) -> None:
        with self._lock:
            if key in self._kept:
                return
            self._kept[key] = markup
            self._chars += len(markup)
            while self._chars > self.max_chars and self._kept:
                self._chars -= len(self._kept.popitem(last=False)[1])


# Every open page of a run asks for the same picture and the same fragment every few seconds.
_charts = Drawn(max_chars=8_000_000)  # about 170 runs' charts; a process holds at most these two
_fragments = Drawn(max_chars=8_000_000)


def chart_markup(run_id) -> Markup | None:
    """The run's drawn chart; drawn once per version of its series in this process."""
    version = queries.chart_version(run_id)  # a few bytes; the series (tens of KB) only when not drawn yet
    if version is not None:
        found = _charts.get((run_id, version))
        if found is not None:
            return Markup(found)
    series, version = queries.chart_of(run_id)
    drawn = loss_chart.render_charts(series)
    if version is not None and drawn is not None:
        _charts.keep((run_id, version), str(drawn))
    return drawn


@dataclass(frozen=True)
class FragmentState:
    """What the status fragment's validator was computed from."""

    run_id: str
    etag: str
    version: int
    status: str
    waiting: Waiting

    def describes(self, run: TunixRun) -> bool:
        """Whether this state is of this run, and the run is still as it saw it (it may have moved on since)."""
        return str(run.id) == self.run_id and run.version == self.version and run.status == self.status


def fragment_state(run_id: str, query: str, viewer: str) -> FragmentState | None:
    """The status fragment's validator and what decided it: the run's version and status (and, for a
    pending run, its queue place and the workers' presence, which change without the run). Each is
    read from the database only when this process has heard that it changed (app.change_feed).
    None for an unknown run."""
    row = queries.fragment_state(run_id)
    if row is None:
        return None
    # The run's id comes first: two runs at the same version, status and poll position render
    # different fragments, so they must never share a validator (nor a kept body).
    parts = [str(row.id), str(row.version), row.status, query, viewer,
             str(current_app.config["STATUS_POLL_SECONDS"])]
    waiting = Waiting.of(row)
    if row.status == PENDING:
        parts += [repr(waiting.position), repr(waiting.wait_seconds), waiting.worker_note or ""]
    return FragmentState(str(row.id), hashlib.sha1("|".join(parts).encode()).hexdigest(), row.version, row.status,
                         waiting)


def rendered_fragment(state: FragmentState) -> str | None:
    """The fragment this process rendered for the same run and validator, if it still has it."""
    return _fragments.get((state.run_id, state.etag))


def keep_fragment(state: FragmentState, run: TunixRun, body: str) -> None:
    """Keep a rendered fragment under its run and validator, unless the run moved on while it was rendered."""
    if state.describes(run):
        _fragments.keep((state.run_id, state.etag), body)


def status_context(run: TunixRun, *, log_after: int | None = None, seen_status: str | None = None,
                   whole_log: bool = False, state: FragmentState | None = None) -> dict:
    """What the status fragment renders. When the poll saw another status than the run has now, the
    sections around the block are rendered too, to be swapped in out of band (nothing goes stale).

    The fragment reads the output stored after `log_after`; without it (and unless `whole_log`, for
    the page) only where the output ends, so the next poll reads on from there. The queue place comes
    from `state` when the run has not moved on since it was computed."""
    max_lines = current_app.config["LOG_TAIL_LINES"]
    if log_after is not None:
        log = logs.after(run.id, log_after, max_lines)
    elif whole_log:
        log = logs.tail(run.id, max_lines)
    else:
        log = logs.LogSlice([], logs.last_seq(run.id))
    waiting = state.waiting if state is not None and state.describes(run) else Waiting.of(run)
    context = {"run": run, "progress": ProgressView.of(run), "scores": ScoresView.of(run),
               "chart": chart_markup(run.id),
               "queue_position": waiting.position, "queue_wait_seconds": waiting.wait_seconds,
               "worker_note": waiting.worker_note, "log": log, "status_words": STATUS_WORDS,
               "changed": seen_status is not None and seen_status != run.status}
    if context["changed"]:
        context.update(_surroundings(run))
    return context


def _stored_files(run: TunixRun) -> dict:
    """The run's files as the store lists them; when it does not answer, the page says so and renders."""
    files = artifacts.of_run(run, current_app.config)
    stored_in = files.where() if shown_location(files.location) else None  # a server's own folder stays unsaid
    try:
        return {"artifacts": artifacts.group(files.files()), "store_error": None, "stored_in": stored_in}
    except StoreError as exc:
        return {"artifacts": artifacts.Artifacts(), "store_error": str(exc), "stored_in": stored_in}


def _surroundings(run: TunixRun) -> dict:
    examples = evaluation.predictions(run.id, "after", 0, EXAMPLES_SHOWN) if run.is_terminal and not run.is_plan \
        else None
    return {**_stored_files(run), **_registry(run),
            "notes": [] if run.is_plan else service.plan_notes(run),
            "retries": queries.retries_of(run.id), "examples": examples,
            "examples_before": evaluation.before_verdicts(run.id, [p.position for p in examples.items])
            if examples else {}}


def _registry(run: TunixRun) -> dict:
    """The run in the registry: the versions its model became, the verdicts of the gates it competed in, and how
    often its model was asked in the playground."""
    candidate_for = gates.candidate_for(run)
    verdicts = gates.verdicts_of(run) if candidate_for else []
    asked = playground.asked_count(playground.key_of_run(run)) if run.status == "completed" else 0
    return {"registered_as": registry_queries.registered_from(run.id), "candidate_for": candidate_for,
            "verdicts": verdicts, "asked_in_playground": asked,
            "gate_words": gates.descriptions([v.gate_id for v in verdicts])}


def page_context(run: TunixRun) -> dict:
    """What the whole run page renders: the status block and every section around it."""
    return {**status_context(run, whole_log=True), **_surroundings(run)}
