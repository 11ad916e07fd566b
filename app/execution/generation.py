"""Answering a playground request on a worker: the model's files brought to the host once, the generation
server (`python -m app.trainer.serve`, in the trainer's interpreter) kept running with the models it holds,
and each answer stored as soon as the server gives it.

The worker never imports JAX; the server does, and speaks JSON lines (app.contract.generation).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from app import instruments
from app.artifacts import store as object_store
from app.artifacts.model_store import ADAPTER_PREFIX, ModelStore, digest_of
from app.artifacts.run_store import run_store
from app.artifacts.store import IntegrityError, StoreSettings
from app.contract.device_mesh import Placement
from app.contract.generation import CANCELLED, COMPLETED, FAILED, storable
from app.contract.run_files import COMPILATION_CACHE_ENV, MODEL_DIR
from app.playground import lifecycle
from app.playground.lifecycle import HeldRequest

log = logging.getLogger(__name__)

STDERR_KEPT_LINES = 40  # of the server's stderr, to say why it ended


class ModelUnavailable(Exception):
    """The model's files could not be brought to this host (missing, damaged, unreachable)."""


class ServerGone(Exception):
    """The generation server ended or stopped answering."""


@dataclass(frozen=True)
class ServerSettings:
    """How a worker runs its generation server; from the app config."""

    command: tuple[str, ...]
    models_dir: Path  # where models' files are brought, once per model
    max_models: int
    memory_fraction: float
    timeout_seconds: float  # one request's longest answer, loading included
    kill_grace_seconds: float
    compilation_cache_dir: str
    store: StoreSettings

    @classmethod
    def from_config(cls, config) -> "ServerSettings":
        return cls(tuple(config["GENERATE_COMMAND"]), Path(config["SCRATCH_DIR"]) / "playground-models",
                   int(config["PLAYGROUND_MODELS"]), float(config["PLAYGROUND_MEMORY_FRACTION"]),
                   float(config["PLAYGROUND_TIMEOUT_SECONDS"]), float(config["KILL_GRACE_SECONDS"]),
                   str(config.get("COMPILATION_CACHE_DIR") or ""), StoreSettings.from_config(config))


class GenerationServer:
    """One `app.trainer.serve` process on the worker's playground device, and the lines it says."""

    def __init__(self, settings: ServerSettings, placement: Placement, memory_bytes: int | None):
        self.settings, self.placement = settings, placement
        env = placement.environment(os.environ)
        if settings.compilation_cache_dir:
            env[COMPILATION_CACHE_ENV] = settings.compilation_cache_dir
        # The server shares no device with a trainer, but keeps JAX from taking a GPU's memory up front.
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        command = [*settings.command, "--max-models", str(settings.max_models),
                   "--memory-fraction", str(settings.memory_fraction)]
        if memory_bytes:
            command += ["--memory-bytes", str(int(memory_bytes))]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, text=True, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        self.held: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "event" in message:
                self.lines.put(message)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line.rstrip())
            del self.stderr[:-STDERR_KEPT_LINES]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise ServerGone(self.why_gone()) from None

    def next_line(self, timeout: float) -> dict[str, Any] | None:
        """The server's next line; None when none came in `timeout`; ServerGone when it ended."""
        try:
            message = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if message is None:
            self.lines.put(None)  # every later read sees the end too
            raise ServerGone(self.why_gone())
        return message

    def why_gone(self) -> str:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        last = next((line for line in reversed(self.stderr) if line.strip()), "")
        return f"the generation server ended (exit code {code}){': ' + last[:300] if last else ''}"

    def stop(self) -> None:
        """End the server: stdin closed, then its process group killed after the grace."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=self.settings.kill_grace_seconds)
            except subprocess.TimeoutExpired:
                self.kill()
        self.held = []

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.held = []


def model_folder(spec: dict[str, Any], settings: ServerSettings,
                 should_stop: Callable[[], bool] | None = None) -> str:
    """Where the server finds the model: a preset's name, a checkpoint's folder, or a local copy of a run's
    export or a registry version (fetched once, each file checked against its SHA-256)."""
    source = spec["source"]
    if source in ("preset", "path"):
        return spec["model_id"]
    name = spec["digest"] if source == "version" else hashlib.sha256(spec["run_id"].encode()).hexdigest()
    folder = settings.models_dir / f"{source}-{name[:32]}"
    if folder.is_dir():
        return str(folder)
    partial = folder.with_name(folder.name + f".part-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if source == "version":
            if digest_of(spec["files"]) != spec["digest"]:
                raise ModelUnavailable(f"model version {spec['ref']} does not match its digest")
            files = [f for f in spec["files"] if not f["path"].startswith(ADAPTER_PREFIX)]  # merged in already
            ModelStore(settings.store, spec["store_url"], should_stop=should_stop).fetch(files, partial)
        else:
            stored = run_store(settings.store, spec.get("location"), spec["run_id"], should_stop=should_stop)
            prefix = MODEL_DIR.strip("/") + "/"
            items = stored.folder(MODEL_DIR)
            if not items:
                raise ModelUnavailable(f"run {spec['run_id'][:8]}'s exported model is not in its store")
            for item in items:
                object_store.download(stored.store, item.entry, partial / item.path[len(prefix):], stored.retry)
        try:
            partial.rename(folder)
        except OSError:
            if not folder.is_dir():  # else another worker of this host fetched the same files first
                raise
    except IntegrityError as exc:
        raise ModelUnavailable(f"the model's files are damaged: {exc}") from None
    except FileNotFoundError:
        raise ModelUnavailable("a file of the model is missing from the store") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(folder)


@dataclass
class Outcome:
    """How a request ended on this worker."""

    status: str | None  # completed, failed, cancelled; None: the lease was lost (recovery settles it)
    message: str | None = None
    server_lost: bool = False  # the server ended or was killed: start a new one for the next request


class RequestLease:
    """Renews a held request's lease in a thread of its own (through the model's fetch, the server's start,
    the answers) and says when its cancel was asked or the lease was lost to recovery."""

    def __init__(self, app, request: HeldRequest, seconds: float):
        self.app, self.request, self.seconds = app, request, seconds
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.check_now = threading.Event()  # a cancel notice arrived
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{request.id}", daemon=True)

    def __enter__(self) -> "RequestLease":
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self.check_now.set()
        self._thread.join()

    def _renew(self) -> None:
        from app.extensions import db

        with self.app.app_context():
            while not self._stop.is_set():
                try:
                    held, cancel = lifecycle.heartbeat(self.request)
                except Exception:  # a database blip: the next beat tries again, well within the lease
                    db.session.rollback()
                    log.warning("playground request %s: lease renewal failed; retrying", self.request.id)
                else:
                    if not held:
                        self.lost.set()
                        return
                    if cancel:
                        self.cancel.set()
                self.check_now.wait(self.seconds)
                self.check_now.clear()


def carry_out(request: HeldRequest, server: GenerationServer, settings: ServerSettings,
              lease: RequestLease, abandon: threading.Event | None = None) -> Outcome:
    """Ask the server, store each answer as it comes, honour a cancel; end the request.

    `abandon` (the worker stopping) hands the request back to the queue for another worker."""
    try:
        spec = {**request.spec, "key": request.model_key,
                "model_id": model_folder(request.spec, settings, should_stop=lease.lost.is_set)}
    except ModelUnavailable as exc:
        return _end(request, FAILED, str(exc))
    except object_store.StoreError as exc:
        return _end(request, FAILED, f"the model's files could not be read from the store: {exc}")
    try:
        server.send({"id": str(request.id), "model": spec, "prompts": request.prompts,
                     "settings": request.settings})
    except ServerGone as exc:
        return _end(request, FAILED, str(exc), server_lost=True)
    deadline = time.monotonic() + settings.timeout_seconds
    cancel_sent_at: float | None = None
    cold = False
    while True:
        now = time.monotonic()
        if abandon is not None and abandon.is_set():
            server.kill()
            done = lifecycle.hand_back(request, "handed back: its worker stopped")
            return Outcome("pending" if done else None, "handed back", server_lost=True)
        if lease.lost.is_set():  # recovered elsewhere: this worker's answers would be refused
            server.kill()
            return Outcome(None, "lease lost", server_lost=True)
        if lease.cancel.is_set() and cancel_sent_at is None:
            try:
                server.send({"cancel": str(request.id)})
            except ServerGone:
                pass
            cancel_sent_at = now
        if cancel_sent_at is not None and now - cancel_sent_at > settings.kill_grace_seconds:
            server.kill()  # mid-answer: a long prompt is not waited out
            return _end(request, CANCELLED, "cancelled while answering", server_lost=True)
        if now > deadline:
            server.kill()
            return _end(request, FAILED, f"no answer within {settings.timeout_seconds:.0f} s "
                                         "(TUNIX_PLAYGROUND_TIMEOUT_SECONDS)", server_lost=True)
        try:
            line = server.next_line(timeout=0.1)
        except ServerGone as exc:
            return _end(request, FAILED, str(exc), server_lost=True)
        if line is None or line.get("id") not in (None, str(request.id)):
            continue
        event = line["event"]
        if event == "loading":
            cold = True
        elif event == "loaded":
            lifecycle.loaded(request, cold=True, seconds=line.get("seconds"))
        elif event == "answer":
            if line["index"] == 0:
                if not cold:
                    lifecycle.loaded(request, cold=False, seconds=None)
                instruments.PLAYGROUND_FIRST_TOKEN.labels(cold=str(cold).lower()).observe(
                    float(line.get("ttft_seconds") or 0.0))
            instruments.PLAYGROUND_TOKENS.inc(int(line.get("tokens") or 0))
            lifecycle.answered(request, {**{k: line.get(k) for k in (
                "index", "tokens", "ttft_seconds", "seconds", "tokens_per_second", "compiled")},
                "text": storable(str(line.get("text", "")))})
        elif event in ("done", "cancelled", "error"):
            server.held = list(line.get("held") or [])
            if event == "done":
                return _end(request, COMPLETED)
            if event == "cancelled":
                return _end(request, CANCELLED, "cancelled while answering")
            return _end(request, FAILED, f"generation failed: {line.get('message')}")


def _end(request: HeldRequest, status: str, message: str | None = None, server_lost: bool = False) -> Outcome:
    done = lifecycle.finish(request, status, message)
    if done:
        instruments.PLAYGROUND_ANSWERED.labels(status=status).inc()
    return Outcome(status if done else None, message, server_lost)


def start_server(settings: ServerSettings, placement: Placement, memory_bytes: int | None,
                 ready_timeout: float) -> GenerationServer:
    """A new server, once it said it is ready; ServerGone when it did not."""
    server = GenerationServer(settings, placement, memory_bytes)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        line = server.next_line(timeout=0.5)
        if line is not None and line.get("event") == "ready":
            log.info("generation server %d ready on %s devices %s", server.pid, placement.platform,
                     list(placement.device_ids))
            return server
    server.kill()
    raise ServerGone(f"the generation server did not start within {ready_timeout:.0f} s")
