"""Running the trainer: one module shared by the sync path and the worker. No database here.

`run_tunix_subprocess` starts the trainer in its own process group inside the run's
directory, keeps bounded tails of its output, hands progress events and output to the
caller as they arrive, stops the whole group when the caller asks (cancel, lost lease,
shutdown) or on timeout, and ties the trainer's life to its parent's. `parse_execution_result`
turns that into a status. `execute_tunix_run_sync` is the two together, for the API's sync mode.
"""
from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from app.artifacts.store import StoreSettings
from app.config import PROJECT_ROOT
from app.contract import progress_protocol, run_files
from app.contract.device_mesh import Placement
from app.run_states import CANCELLED, CANCELLED_BY_USER, COMPLETED, FAILED, TIMEOUT

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
MAX_KEPT_EVENTS = 2000

EventHandler = Callable[[dict[str, Any]], None]
OutputHandler = Callable[[str, bytes], None]

STOP_CANCEL = "cancel"  # the user cancelled the run
STOP_LEASE_LOST = "lease_lost"  # another worker recovered the run: this execution must end
STOP_SHUTDOWN = "shutdown"  # the worker is shutting down and hands the run back


@dataclass(frozen=True)
class StopRequest:
    """What `on_tick` returns to have the trainer's process group stopped."""

    reason: str
    grace_seconds: float


@dataclass(frozen=True)
class ExecutionSettings:
    """How runs are executed; built from the app config."""

    command: tuple[str, ...]
    scratch_root: Path  # the local folder runs are trained in, one fresh folder per execution
    timeout_seconds: float
    output_max_bytes: int
    kill_grace_seconds: float = 10.0
    heartbeat_seconds: float = 10.0  # lease renewal while the trainer runs
    log_max_bytes: int = 5 * 1024 * 1024  # output stored in the database per run
    compilation_cache_dir: str = ""  # handed to the trainer; "" leaves JAX's cache off
    store: StoreSettings | None = None  # where runs' files are stored; None: left in the scratch folder

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ExecutionSettings":
        return cls(command=tuple(config["TRAIN_COMMAND"]), scratch_root=Path(config["SCRATCH_DIR"]),
                   timeout_seconds=float(config["RUN_TIMEOUT_SECONDS"]),
                   output_max_bytes=int(config["OUTPUT_MAX_BYTES"]),
                   kill_grace_seconds=float(config["KILL_GRACE_SECONDS"]),
                   heartbeat_seconds=float(config["HEARTBEAT_SECONDS"]),
                   log_max_bytes=int(config["LOG_MAX_BYTES"]),
                   compilation_cache_dir=str(config.get("COMPILATION_CACHE_DIR") or ""),
                   store=StoreSettings.from_config(config))


@dataclass
class ProcessOutcome:
    """What the trainer process did, before any interpretation."""

    command: list[str]
    exit_code: int | None
    timed_out: bool
    launch_error: str | None
    duration_seconds: float
    stdout_tail: bytes
    stdout_dropped_bytes: int
    stderr_tail: bytes
    stderr_dropped_bytes: int
    events: list[dict[str, Any]] = field(default_factory=list)  # every event but "step"
    stop_reason: str | None = None  # set when the caller had the process group stopped


@dataclass
class ExecutionResult:
    """A run's outcome as it is stored: status, exit code, error, output tails, summary."""

    status: str
    exit_code: int | None
    error_message: str | None
    stdout: str
    stderr: str
    summary: dict[str, Any] | None


class _TailBuffer:
    """Keeps the last `limit` bytes written to it and counts what it dropped."""

    def __init__(self, limit: int):
        self.limit = max(0, limit)
        self._data = bytearray()
        self.dropped = 0

    def write(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]
            self.dropped += excess

    def value(self) -> bytes:
        return bytes(self._data)


def _pump(stream, name: str, tail: _TailBuffer, inbox: queue.Queue) -> None:
    # readline with a size bound: a line without newlines cannot grow without limit.
    for line in iter(lambda: stream.readline(READ_CHUNK), b""):
        event = progress_protocol.parse_line(line) if name == "stdout" else None
        if event is not None:
            inbox.put(("event", event))
        else:
            tail.write(line)
            inbox.put(("output", (name, line)))
    stream.close()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If the worker dies (even by SIGKILL), the kernel kills its trainer: no orphan keeps
    # training a run that another worker may be about to take over.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the lease still guards against a double run
        pass


def child_environment(settings: ExecutionSettings, placement: Placement | None = None) -> dict[str, str]:
    """The trainer's environment: this process's, kept to its placement's devices, with the compilation cache,
    unbuffered output and the project on the path."""
    env = placement.environment(os.environ) if placement is not None else dict(os.environ)
    env[run_files.COMPILATION_CACHE_ENV] = settings.compilation_cache_dir
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_process_group(proc: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM the group, give it the grace period, then SIGKILL whatever is left."""
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGKILL)
    proc.wait()


class RunDirectoryBusy(RuntimeError):
    """Another trainer (of this host) holds the run's lock."""


def _lock(path: Path) -> int:
    """An exclusive lock on `path`, as an open descriptor; RunDirectoryBusy when another holds it.

    The trainer inherits the descriptor: the lock lasts as long as the trainer does, even past a
    worker killed with -9, so two trainers of one host never train one run at once. The holder
    removes the file as it lets go (`_unlock`): a waiter that locked the removed file finds it is no
    longer the one at `path`, and tries again on the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryBusy(f"another trainer holds {path}") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlock(fd: int, path: Path) -> None:
    """Let go of a lock taken by `_lock`, removing its file (its trainer has ended) so none are left behind."""
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            path.unlink()
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def run_tunix_subprocess(run_dir: Path, settings: ExecutionSettings, *,
                         on_event: EventHandler | None = None, on_output: OutputHandler | None = None,
                         on_tick: Callable[[], StopRequest | None] | None = None,
                         tick_seconds: float = 0.25, placement: Placement | None = None,
                         lock_path: Path | None = None) -> ProcessOutcome:
    """Run the trainer on `run_dir` and wait for it; pure execution, no database. The trainer holds the
    run's lock, `lock_path` (by default a file in `run_dir`; the worker names one per run beside its
    scratch folders), waited for, with `on_tick` still called, while another trainer holds it.

    The run directory is appended to `settings.command`. In the caller's thread, `on_event` gets
    every progress event, `on_output` every other line, and `on_tick` is called about
    every `tick_seconds`; when it returns a StopRequest the process group is stopped
    (SIGTERM, its grace period, SIGKILL) and the outcome carries the reason. `placement` keeps the
    trainer to its devices.
    """
    argv = [*settings.command, str(run_dir)]
    lock_path = lock_path or run_dir / run_files.TRAINER_LOCK_FILE
    started, waited = time.monotonic(), False
    lock = None
    while lock is None:
        try:
            lock = _lock(lock_path)
        except RunDirectoryBusy:
            # A trainer whose lease ended without its worker knowing yet still trains this run: wait for
            # it to be gone (its worker kills it at its next renewal), keeping this lease, never beside it.
            if on_tick is None:
                raise
            if not waited:
                log.warning("%s is held by another trainer; waiting for it to end", lock_path)
                waited = True
            stop = on_tick()
            if stop is not None:
                return ProcessOutcome(argv, None, False, None, time.monotonic() - started, b"", 0, b"", 0,
                                      stop_reason=stop.reason)
            time.sleep(tick_seconds)
    try:
        return _run_locked(argv, run_dir, settings, lock, on_event, on_output, on_tick, tick_seconds, placement)
    finally:
        _unlock(lock, lock_path)


def _run_locked(argv: list[str], run_dir: Path, settings: ExecutionSettings, lock: int,
                on_event: EventHandler | None, on_output: OutputHandler | None,
                on_tick: Callable[[], StopRequest | None] | None, tick_seconds: float,
                placement: Placement | None) -> ProcessOutcome:
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=child_environment(settings, placement),
                                start_new_session=True,
                                preexec_fn=_die_with_parent, pass_fds=(lock,))
    except (OSError, subprocess.SubprocessError) as exc:
        return ProcessOutcome(argv, None, False, f"{type(exc).__name__}: {exc}", time.monotonic() - started,
                              b"", 0, b"", 0)
    log.info("trainer started pid=%s run_dir=%s", proc.pid, run_dir)

    stdout_tail, stderr_tail = _TailBuffer(settings.output_max_bytes), _TailBuffer(settings.output_max_bytes)
    inbox: queue.Queue = queue.Queue()
    readers = [threading.Thread(target=_pump, args=(proc.stdout, "stdout", stdout_tail, inbox), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "stderr", stderr_tail, inbox), daemon=True)]
    for reader in readers:
        reader.start()

    kept_events: list[dict[str, Any]] = []

    def drain() -> None:
        while True:
            try:
                kind, item = inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "output":
                if on_output is not None:
                    on_output(*item)
                continue
            if item.get("event") != "step" and len(kept_events) < MAX_KEPT_EVENTS:
                kept_events.append(item)
            if on_event is not None:
                on_event(item)

    deadline = started + settings.timeout_seconds
    timed_out, stop_reason = False, None
    try:
        while True:
            try:
                proc.wait(timeout=tick_seconds)
                break
            except subprocess.TimeoutExpired:
                pass
            drain()
            stop = on_tick() if on_tick is not None else None
            if stop is not None:
                stop_reason = stop.reason
                log.info("trainer pid=%s: stopping its process group (%s)", proc.pid, stop.reason)
                _stop_process_group(proc, stop.grace_seconds)
                break
            if time.monotonic() >= deadline:
                timed_out = True
                log.warning("trainer pid=%s timed out after %.0f s; killing its process group", proc.pid,
                            settings.timeout_seconds)
                _stop_process_group(proc, settings.kill_grace_seconds)
                break
    except BaseException:
        # A handler failed (or the process is being torn down): never leave the trainer running.
        _kill_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise

    # Children the trainer left behind would keep the pipes open: end the whole group.
    _kill_group(proc.pid, signal.SIGKILL)
    for reader in readers:
        reader.join(timeout=5)
    drain()
    return ProcessOutcome(argv, proc.returncode, timed_out, None, time.monotonic() - started,
                          stdout_tail.value(), stdout_tail.dropped, stderr_tail.value(), stderr_tail.dropped,
                          kept_events, stop_reason)


def truncate_output(data: bytes, dropped_bytes: int, max_bytes: int) -> str:
    """The stored form of an output tail: at most `max_bytes` bytes, with a notice when cut."""
    if dropped_bytes == 0 and len(data) <= max_bytes:
        return data.decode("utf-8", errors="replace")
    keep = max(0, max_bytes - 64)  # the notice fits in 64 bytes
    tail = data[len(data) - keep:] if keep else b""
    notice = f"[... {dropped_bytes + len(data) - len(tail)} earlier bytes truncated ...]\n"
    # errors="ignore" drops the half UTF-8 sequence the cut may have left at the start.
    return notice + tail.decode("utf-8", errors="ignore")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def parse_execution_result(outcome: ProcessOutcome, settings: ExecutionSettings) -> ExecutionResult:
    """Turn what the trainer process did into a stored outcome: status, exit code, error, tails."""
    stdout = truncate_output(outcome.stdout_tail, outcome.stdout_dropped_bytes, settings.output_max_bytes)
    stderr = truncate_output(outcome.stderr_tail, outcome.stderr_dropped_bytes, settings.output_max_bytes)
    summary = progress_protocol.summary_from_events(outcome.events)
    trainer_error = progress_protocol.error_from_events(outcome.events)

    def result(status: str, error: str | None) -> ExecutionResult:
        return ExecutionResult(status, outcome.exit_code, error, stdout, stderr, summary)

    if outcome.launch_error:
        return result(FAILED, f"could not start the trainer ({' '.join(outcome.command[:-1])}): "
                              f"{outcome.launch_error}")
    if outcome.stop_reason == STOP_CANCEL:
        return result(CANCELLED, CANCELLED_BY_USER)
    if outcome.stop_reason:
        return result(FAILED, f"stopped by the platform ({outcome.stop_reason})")
    if outcome.timed_out:
        return result(TIMEOUT, f"timed out after {settings.timeout_seconds:g} s; the trainer's process group was killed")
    code = outcome.exit_code
    if code == 0:
        return result(COMPLETED, None)
    if code is not None and code < 0:
        reason = f"killed by {_signal_name(-code)}"
        if -code == signal.SIGKILL:
            reason += " (likely out of memory)"
        return result(FAILED, trainer_error or reason)
    detail = trainer_error or _last_line(stderr) or _last_line(stdout) or "no output"
    return result(FAILED, f"trainer exited with code {code}: {detail}")


def execute_tunix_run_sync(run_dir: Path, settings: ExecutionSettings,
                           on_event: EventHandler | None = None, on_output: OutputHandler | None = None,
                           on_tick: Callable[[], StopRequest | None] | None = None) -> ExecutionResult:
    """Run the trainer to the end and return the parsed result (the sync path's primitive)."""
    outcome = run_tunix_subprocess(run_dir, settings, on_event=on_event, on_output=on_output, on_tick=on_tick)
    return parse_execution_result(outcome, settings)
