"""A worker's share of the playground: one generation server on one of its devices, answering one
request at a time in a thread of its own, kept running (with its models) between requests.

The worker's main thread decides when to claim (app.queue.generation has the policy); this module claims,
carries the request out through `app.execution.generation`, and gives the device back to training when
the main thread needs it and no request is in progress.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask

from app.contract.device_mesh import Placement
from app.execution import generation
from app.execution.generation import ServerGone, ServerSettings
from app.playground import lifecycle
from app.playground.lifecycle import HeldRequest
from app.queue import generation as generation_queue

log = logging.getLogger("tunix_rt.worker")

MODES = ("share", "only", "off")
SERVER_READY_SECONDS = 300.0  # the first JAX import on a GPU host loads CUDA's libraries


class Playground:
    """The worker's generation server and the request it answers."""

    def __init__(self, app: Flask, worker_id: str, platform: str, devices: dict[int, dict[str, Any]],
                 heartbeat_seconds: float):
        config = app.config
        self.app, self.worker_id, self.platform, self.devices = app, worker_id, platform, devices
        self.settings = ServerSettings.from_config(config)
        self.heartbeat_seconds = heartbeat_seconds
        self.prefer_seconds = float(config["PLAYGROUND_PREFER_SECONDS"])
        self.passover_seconds = float(config["PLAYGROUND_PASSOVER_SECONDS"])
        self.server: generation.GenerationServer | None = None
        self.device: int | None = None
        self.current: HeldRequest | None = None
        self.answered = 0
        self.lease: generation.RequestLease | None = None
        self._abandon = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._on_end = None

    def busy(self) -> bool:
        with self._lock:
            return self.current is not None

    def held_device(self) -> int | None:
        """The device its server holds (or is about to), None when it holds none."""
        with self._lock:
            if self.current is not None:
                return self.device
            return self.device if self.server is not None and self.server.alive() else None

    def idle_device(self) -> int | None:
        """The device of a server that answers nothing now: training may take it."""
        with self._lock:
            if self.current is None and self.server is not None and self.server.alive():
                return self.device
        return None

    def claim(self, free: list[int], on_end) -> bool:
        """Claim the next request (preferring models the server holds) and answer it in a thread."""
        if self.busy():
            return False
        device = self.held_device()
        if device is None:
            if not free:
                return False
            device = free[0]
        held = list(self.server.held) if self.server is not None and self.server.alive() else []
        request = generation_queue.claim_next(self.worker_id, held, self.prefer_seconds)
        if request is None:
            return False
        log.info("worker %s: answering playground request %s (%s) on device %s", self.worker_id, request.id,
                 request.model_key, device)
        with self._lock:
            self.current, self.device, self._on_end = request, device, on_end
        self._thread = threading.Thread(target=self._answer, args=(request,), name=f"generate-{request.id}",
                                        daemon=True)
        self._thread.start()
        return True

    def _answer(self, request: HeldRequest) -> None:
        try:
            with self.app.app_context():
                self._answer_in_context(request)
        except Exception:
            log.exception("worker %s: playground request %s: its thread failed", self.worker_id, request.id)
            try:
                with self.app.app_context():
                    lifecycle.finish(request, "failed", "worker error; the worker log has the details")
            except Exception:  # its lease expires, and recovery settles it
                log.exception("worker %s: could not mark request %s failed", self.worker_id, request.id)
        finally:
            with self._lock:
                self.current = None
                self.answered += 1
                on_end = self._on_end
            if on_end is not None:
                on_end()

    def _answer_in_context(self, request: HeldRequest) -> None:
        with generation.RequestLease(self.app, request, self.heartbeat_seconds) as lease:
            self.lease = lease
            try:
                if self.server is None or not self.server.alive():
                    memory = (self.devices.get(self.device) or {}).get("memory_bytes")
                    try:
                        self.server = generation.start_server(
                            self.settings, Placement(self.platform, (self.device,)), memory, SERVER_READY_SECONDS)
                    except (ServerGone, OSError) as exc:
                        self.server = None
                        lifecycle.finish(request, "failed", f"the generation server could not start: {exc}")
                        return
                outcome = generation.carry_out(request, self.server, self.settings, lease, self._abandon)
            finally:
                self.lease = None
        log.info("worker %s: playground request %s %s", self.worker_id, request.id, outcome.status or "lost")
        if outcome.server_lost:
            if self.server is not None and self.server.alive():
                self.server.kill()
            self.server = None

    def notice_cancel(self) -> None:
        """A cancel notice arrived: the request in progress checks its lease now."""
        lease = self.lease
        if lease is not None:
            lease.check_now.set()

    def release(self) -> None:
        """Give the device back (the server and its models end); only while no request is in progress."""
        with self._lock:
            if self.current is not None:
                return
            server, self.server, self.device = self.server, None, None
        if server is not None:
            log.info("worker %s: generation server %d stopped: its device goes to training", self.worker_id,
                     server.pid)
            server.stop()

    def abandon(self) -> None:
        """The worker is stopping now: hand the request in progress back to the queue."""
        self._abandon.set()

    def wait(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def close(self) -> None:
        """Stop the server once nothing is in progress (the worker is ending)."""
        self.wait()
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            server.stop()
