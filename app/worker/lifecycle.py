"""The worker's lifecycle: register its devices, wait for work, claim runs that fit, execute each under a
lease on its own devices, persist, stop.

Worker requires Postgres due to SKIP LOCKED semantics.

A worker places several runs at once, each on devices no other run of it holds: the main thread claims
(only a run that fits its free devices; the policy is in `app.queue.store`), and each run executes in a
thread of its own, which renews that run's lease (heartbeat) every TUNIX_HEARTBEAT_SECONDS, stores its
progress and output and stops its trainer when it is cancelled. Meanwhile the main thread heartbeats
the worker, recovers other workers' runs whose leases expired and routes cancel notifications. On the
first SIGTERM/SIGINT it claims nothing new and gives its runs TUNIX_WORKER_SHUTDOWN_GRACE_SECONDS to
finish, then hands them back to the queue (pending again, the attempt not counted); a second signal
hands them back at once.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from flask import Flask
from sqlalchemy.exc import InterfaceError, OperationalError

from app import instruments
from app.contract.device_mesh import Placement
from app.execution.lease import RunLease
from app.execution.runner import execute_leased_run
from app.execution.tunix_execution import STOP_SHUTDOWN, ExecutionSettings, StopRequest
from app.extensions import db
from app.listen import RECONNECTED
from app.playground.service import PAYLOAD_PREFIX
from app.queue import generation as generation_queue, registry, store as queue_store
from app.runs.channels import CANCEL_CHANNEL, QUEUE_CHANNEL
from app.runs import counts
from app.runs import lifecycle as run_moves
from app.worker import devices as worker_devices, playground as playground_share
from app.runs.lifecycle import LeasedRun
from app.sweeps import service as sweep_service

log = logging.getLogger("tunix_rt.worker")

DB_RETRY_MAX_SECONDS = 30.0
DB_ERRORS = (OperationalError, InterfaceError)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class ActiveRun:
    """A run this worker executes, in its thread, on its devices."""

    run: LeasedRun
    thread: threading.Thread | None = None
    check_lease: threading.Event = field(default_factory=threading.Event)  # a cancel may have been asked


class Worker:
    """Claims pending runs that fit its free devices and carries each out, side by side, through the
    execution module."""

    def __init__(self, app: Flask, worker_id: str | None = None, exit_when_idle: bool = False,
                 device_ids: str | None = None, playground: str | None = None):
        config = app.config
        self.app = app
        self.worker_id = worker_id or new_worker_id()
        self.exit_when_idle = exit_when_idle
        self.settings = ExecutionSettings.from_config(config)
        self.poll_seconds = float(config["WORKER_POLL_SECONDS"])
        self.use_listen = bool(config["WORKER_LISTEN"])
        self.heartbeat_seconds = float(config["HEARTBEAT_SECONDS"])
        self.lease_timeout_seconds = float(config["LEASE_TIMEOUT_SECONDS"])
        self.shutdown_grace_seconds = float(config["WORKER_SHUTDOWN_GRACE_SECONDS"])
        self.passover_seconds = float(config["PLACEMENT_PASSOVER_SECONDS"])
        self.probe_command = list(config["DEVICE_PROBE_COMMAND"])
        self.wanted_ids = worker_devices.parse_device_ids(
            device_ids if device_ids is not None else config["WORKER_DEVICES"])
        self.inventory: worker_devices.Inventory | None = None
        self.playground_mode = (playground or config["WORKER_PLAYGROUND"]).strip().lower()
        if self.playground_mode not in playground_share.MODES:
            raise ValueError(f"--playground takes {', '.join(playground_share.MODES)}; got {self.playground_mode!r}")
        self.playground: playground_share.Playground | None = None
        self.listener = None
        self.runs_done = 0
        self._active: dict[uuid.UUID, ActiveRun] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a run ended (devices came free) or a stop was asked
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._next_housekeeping = 0.0
        self._shutdown_deadline: float | None = None

    # -- signals -----------------------------------------------------------------------
    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        """First call: claim nothing new, let the runs finish within the grace. Second: hurry."""
        name = signal.Signals(signum).name if signum else "stop request"
        if self._stopping.is_set():
            self._hurry.set()
            log.info("worker %s: second %s: handing its runs back now", self.worker_id, name)
            return
        self._shutdown_deadline = time.monotonic() + self.shutdown_grace_seconds
        self._stopping.set()
        self.wake_up()
        active = self.active_run_ids()
        if active:
            log.info("worker %s: %s received: claiming nothing new; each of its %d runs gets up to %.0f s to finish",
                     self.worker_id, name, len(active), self.shutdown_grace_seconds)
        else:
            log.info("worker %s: %s received: stopping", self.worker_id, name)

    def wake_up(self) -> None:
        """A run or an answer ended (its devices came free): the main loop claims again at once."""
        self._wake.set()
        if self.listener is not None:
            self.listener.interrupt()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- devices -----------------------------------------------------------------------
    def active_run_ids(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._active)

    def free_device_ids(self) -> list[int]:
        """This worker's devices no run of it holds, nor its generation server."""
        with self._lock:
            busy = {i for active in self._active.values() for i in (active.run.device_ids or ())}
        if self.playground is not None and self.playground.held_device() is not None:
            busy.add(self.playground.held_device())
        return [i for i in self.inventory.ids if i not in busy]

    def busy(self) -> bool:
        """True while a run or a playground request of this worker is in progress."""
        return bool(self.active_run_ids()) or (self.playground is not None and self.playground.busy())

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Loop until asked to stop (or, with exit_when_idle, until the queue is empty and its runs ended)."""
        if db.engine.dialect.name != "postgresql":
            raise SystemExit("worker.py needs Postgres: the queue claims runs with SKIP LOCKED")
        try:
            self.inventory = worker_devices.detect(self.probe_command).restricted(self.wanted_ids)
        except ValueError as exc:
            raise SystemExit(f"worker.py: {exc}") from None
        if self.use_listen:
            from app.listen import Listener

            self.listener = Listener(db.engine.url.set(drivername="postgresql").render_as_string(False),
                                     (QUEUE_CHANNEL, CANCEL_CHANNEL), f"tunix-rt-listen {self.worker_id}")
        if self.playground_mode != "off":
            self.playground = playground_share.Playground(
                self.app, self.worker_id, self.inventory.platform,
                {int(d["id"]): d for d in self.inventory.devices}, self.heartbeat_seconds)
        log.info("worker %s: started on %d %s devices %s (found by %s; %s, fallback poll every %.1f s, lease %.0f s, "
                 "heartbeat %.0f s; playground: %s)", self.worker_id, len(self.inventory.ids), self.inventory.platform,
                 self.inventory.ids, self.inventory.source, "LISTEN/NOTIFY" if self.use_listen else "polling only",
                 self.poll_seconds, self.lease_timeout_seconds, self.heartbeat_seconds, self.playground_mode)
        try:
            self._with_db_retry(lambda: registry.register(
                self.worker_id, socket.gethostname(), os.getpid(), list(self.inventory.devices),
                self.inventory.versions, playground=self.playground_mode))
            self._with_db_retry(registry.prune_stopped)
            with run_moves.own_connection():
                self._loop()
        finally:
            self._drain()
            if self.playground is not None:
                self.playground.close()
            self._deregister()
        log.info("worker %s: stopped after %d runs", self.worker_id, self.runs_done)

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self._housekeeping()
                claimed = self.claim_one()
                backoff = 1.0
            except DB_ERRORS as exc:
                db.session.rollback()
                log.warning("worker %s: database unavailable (%s); retrying in %.0f s", self.worker_id,
                            type(exc).__name__, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_SECONDS)
                continue
            if claimed:
                continue  # more devices may be free: claim until none fits
            if self.exit_when_idle and not self.busy():
                break
            self._wait()

    def _wait(self) -> None:
        """Until a notification, a run's end, a stop, or the next housekeeping; routes cancels to their runs."""
        timeout = min(self.poll_seconds, self.heartbeat_seconds) if self.busy() else self.poll_seconds
        if self.listener is None:
            self._wake.wait(timeout)
            return
        for channel, payload in self.listener.wait(timeout, self._wake):
            if self.playground is not None and (channel == RECONNECTED or (
                    channel == CANCEL_CHANNEL and payload.startswith(PAYLOAD_PREFIX))):
                self.playground.notice_cancel()  # maybe of the request it answers
            with self._lock:
                for run_id, active in self._active.items():
                    if channel == RECONNECTED or (channel == CANCEL_CHANNEL and payload == str(run_id)):
                        active.check_lease.set()  # asked to cancel (or a notice missed while LISTEN was down)

    def claim_one(self) -> bool:
        """Claim a playground request or a run, as the policy says (app.queue.generation), and start it in a
        thread of its own; False when nothing fits."""
        free = self.free_device_ids()
        capacity = len(self.inventory.ids)
        playground = self.playground
        if playground is not None and not playground.busy() and (free or playground.held_device() is not None):
            if self.playground_mode == "only" or not generation_queue.training_goes_first(
                    capacity, playground.passover_seconds):
                if playground.claim(free, self.wake_up):
                    return True
        if self.playground_mode == "only":
            return False
        run = queue_store.claim_next_run(self.worker_id, free, capacity, self.passover_seconds) if free else None
        spare = playground.idle_device() if playground is not None else None
        if run is None and spare is not None:
            # Only a run that needs the generation server's device too: the server (and its models) make way.
            run = queue_store.claim_next_run(self.worker_id, sorted([*free, spare]), capacity, self.passover_seconds)
            if run is not None and spare in (run.device_ids or ()):
                playground.release()
        if run is None:
            return False
        log.info("worker %s: claimed run %s (attempt %d of %d) on devices %s", self.worker_id, run.id,
                 run.lease.attempt, run.max_attempts, list(run.device_ids or ()))
        active = ActiveRun(run)
        active.thread = threading.Thread(target=self._execute, args=(active,), name=f"run-{run.id}", daemon=True)
        with self._lock:
            self._active[run.id] = active
        active.thread.start()
        return True

    def _execute(self, active: ActiveRun) -> None:
        run = active.run
        placement = Placement(self.inventory.platform, tuple(run.device_ids or ()))
        try:
            with self.app.app_context(), run_moves.own_connection():
                outcome = execute_leased_run(run, self.settings, where="worker", placement=placement,
                                             extra_tick=lambda lease: self._tick(lease, active),
                                             persist=self._with_db_retry)
            log.info("worker %s: run %s %s%s", self.worker_id, run.id, outcome,
                     " (after the stop request)" if self._stopping.is_set() else "")
        except Exception as exc:  # the execution module settles every run; this is a last guard for the thread
            log.exception("worker %s: run %s: its thread failed", self.worker_id, run.id)
            try:
                with self.app.app_context():
                    run_moves.fail(run.id, f"worker error ({type(exc).__name__}); the worker log has the details",
                                   lease=run.lease)
            except Exception:  # its lease expires, and recovery settles it
                log.exception("worker %s: run %s: could not mark it failed", self.worker_id, run.id)
        finally:
            with self._lock:
                self._active.pop(run.id, None)
                self.runs_done += 1
            self.wake_up()

    def _drain(self) -> None:
        """Stopping: wait for the runs and the playground request to end (after the grace both are handed back),
        heartbeating."""
        while self.busy():
            if self.playground is not None and (self._hurry.is_set() or time.monotonic() >= (
                    self._shutdown_deadline or 0.0)):
                self.playground.abandon()
            self._wake.clear()
            try:
                self._housekeeping()
            except DB_ERRORS:
                db.session.rollback()
            if self.busy():
                self._wait()

    def _tick(self, lease: RunLease, active: ActiveRun) -> StopRequest | None:
        """What the worker adds to a run's execution: its cancel wake-ups and its shutdown stop."""
        if active.check_lease.is_set():
            active.check_lease.clear()
            lease.check_now()
        if self._stopping.is_set():
            if self._hurry.is_set() or time.monotonic() >= (self._shutdown_deadline or 0.0):
                grace = self.settings.kill_grace_seconds
                return StopRequest(STOP_SHUTDOWN, grace_seconds=min(grace, 2.0) if self._hurry.is_set() else grace)
        return None

    # -- housekeeping: own heartbeat, recovering others' expired leases -----------------------
    def _housekeeping(self) -> None:
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self.heartbeat_seconds
        active = self.active_run_ids()
        state = registry.STOPPING if self._stopping.is_set() else (registry.RUNNING if self.busy() else registry.IDLE)
        registry.heartbeat(self.worker_id, state, active[0] if active else None, self.runs_done)
        for _ in range(100):  # bounded per pass; the next pass takes the rest
            recovered = queue_store.recover_one_expired_lease(self.lease_timeout_seconds)
            if recovered is None:
                break
            log.warning("worker %s: recovered run %s from a lost worker: now %s", self.worker_id, *recovered)
        for _ in range(100):
            recovered = generation_queue.recover_one_expired(self.lease_timeout_seconds)
            if recovered is None:
                break
            log.warning("worker %s: recovered playground request %s from a lost worker: now %s", self.worker_id,
                        *recovered)
        counts.reconcile(self.app.config["COUNTS_RECONCILE_SECONDS"])
        # Sweeps move on here too: a trial cancelled while pending, or failed by recovery, has no worker
        # to advance its sweep when it ends.
        try:
            sweep_service.advance_running()
        except DB_ERRORS:
            raise
        except Exception:
            db.session.rollback()
            log.exception("worker %s: advancing the sweeps failed; the next pass retries", self.worker_id)

    def _deregister(self) -> None:
        try:
            registry.heartbeat(self.worker_id, registry.STOPPED, None, self.runs_done)
        except DB_ERRORS:
            db.session.rollback()
        if self.listener is not None:
            self.listener.close()

    def _with_db_retry(self, write):
        # An outcome must not be lost to a brief database outage: keep trying, with backoff.
        backoff = 1.0
        while True:
            try:
                return write()
            except DB_ERRORS as exc:
                db.session.rollback()
                if self._hurry.is_set():
                    log.error("worker %s: giving up on a database write (%s); the lease will expire and the "
                              "run will be recovered", self.worker_id, type(exc).__name__)
                    return None
                log.warning("worker %s: database write failed (%s); retrying in %.0f s", self.worker_id,
                            type(exc).__name__, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_SECONDS)


def serve(app: Flask, exit_when_idle: bool = False, device_ids: str | None = None,
          playground: str | None = None) -> Worker:
    """Run a worker in this process until SIGTERM/SIGINT; the entry point of worker.py."""
    try:
        worker = Worker(app, exit_when_idle=exit_when_idle, device_ids=device_ids, playground=playground)
    except ValueError as exc:
        raise SystemExit(f"worker.py: {exc}") from None
    worker.install_signal_handlers()
    instruments.start_worker_metrics_server(app.config["WORKER_METRICS_PORT"], app.config["WORKER_METRICS_HOST"])
    with app.app_context():
        worker.run()
    return worker
