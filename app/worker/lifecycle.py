"""The worker's lifecycle: register, wait for work, claim, execute under a lease, persist, stop.

Worker requires Postgres due to SKIP LOCKED semantics.

While a run executes, the worker renews its lease (heartbeat) every TUNIX_HEARTBEAT_SECONDS,
stores progress and output, watches for a cancel, and keeps recovering other workers'
runs whose leases expired. On the first SIGTERM/SIGINT it claims nothing new and gives its
current run TUNIX_WORKER_SHUTDOWN_GRACE_SECONDS to finish, then hands it back to the queue
(pending again, the attempt not counted); a second signal hands it back at once.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid

from flask import Flask
from sqlalchemy.exc import InterfaceError, OperationalError

from app import instruments
from app.execution.lease import RunLease
from app.execution.runner import execute_leased_run
from app.execution.tunix_execution import STOP_SHUTDOWN, ExecutionSettings, StopRequest
from app.extensions import db
from app.listen import RECONNECTED
from app.queue import registry, store as queue_store
from app.runs.channels import CANCEL_CHANNEL, QUEUE_CHANNEL
from app.runs import counts
from app.runs import lifecycle as run_moves
from app.worker.devices import local_devices
from app.runs.lifecycle import LeasedRun
from app.sweeps import service as sweep_service

log = logging.getLogger("tunix_rt.worker")

DB_RETRY_MAX_SECONDS = 30.0
DB_ERRORS = (OperationalError, InterfaceError)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims pending runs one at a time and carries each out through the execution module."""

    def __init__(self, app: Flask, worker_id: str | None = None, exit_when_idle: bool = False):
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
        self.listener = None
        self.runs_done = 0
        self.current_run: LeasedRun | None = None
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._next_housekeeping = 0.0
        self._shutdown_deadline: float | None = None

    # -- signals -----------------------------------------------------------------------
    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        """First call: claim nothing new, let the current run finish within the grace. Second: hurry."""
        name = signal.Signals(signum).name if signum else "stop request"
        if self._stopping.is_set():
            self._hurry.set()
            log.info("worker %s: second %s: handing the current run back now", self.worker_id, name)
            return
        self._stopping.set()
        if self.current_run is not None:
            log.info("worker %s: %s received: claiming nothing new; run %s gets up to %.0f s to finish",
                     self.worker_id, name, self.current_run.id, self.shutdown_grace_seconds)
        else:
            log.info("worker %s: %s received: stopping", self.worker_id, name)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Loop until asked to stop (or, with exit_when_idle, until the queue is empty)."""
        if db.engine.dialect.name != "postgresql":
            raise SystemExit("worker.py needs Postgres: the queue claims runs with SKIP LOCKED")
        if self.use_listen:
            from app.listen import Listener

            self.listener = Listener(db.engine.url.set(drivername="postgresql").render_as_string(False),
                                     (QUEUE_CHANNEL, CANCEL_CHANNEL), f"tunix-rt-listen {self.worker_id}")
        log.info("worker %s: started (%s, fallback poll every %.1f s, lease %.0f s, heartbeat %.0f s)",
                 self.worker_id, "LISTEN/NOTIFY" if self.use_listen else "polling only", self.poll_seconds,
                 self.lease_timeout_seconds, self.heartbeat_seconds)
        try:
            found = local_devices()
            self._with_db_retry(lambda: registry.register(self.worker_id, socket.gethostname(), os.getpid(), found))
            self._with_db_retry(registry.prune_stopped)
            with run_moves.own_connection():
                self._loop()
        finally:
            self._deregister()
        log.info("worker %s: stopped after %d runs", self.worker_id, self.runs_done)

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                self._housekeeping()
                worked = self.run_once()
                backoff = 1.0
            except DB_ERRORS as exc:
                db.session.rollback()
                log.warning("worker %s: database unavailable (%s); retrying in %.0f s", self.worker_id,
                            type(exc).__name__, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_SECONDS)
                continue
            if not worked:
                if self.exit_when_idle:
                    break
                self._wait_for_work()

    def _wait_for_work(self) -> None:
        if self.listener is not None:
            self.listener.wait(self.poll_seconds, self._stopping)
        else:
            self._stopping.wait(self.poll_seconds)

    def run_once(self) -> bool:
        """Claim and carry out one run; False when none was pending."""
        run = queue_store.claim_next_run(self.worker_id)
        if run is None:
            return False
        log.info("worker %s: claimed run %s (attempt %d of %d)", self.worker_id, run.id, run.lease.attempt,
                 run.max_attempts)
        self.current_run, self._shutdown_deadline = run, None
        try:
            outcome = execute_leased_run(run, self.settings, where="worker", extra_tick=self._tick,
                                         persist=self._with_db_retry)
        finally:
            self.current_run = None
        log.info("worker %s: run %s %s%s", self.worker_id, run.id, outcome,
                 " (after the stop request)" if self._stopping.is_set() else "")
        self.runs_done += 1
        return True

    def _tick(self, lease: RunLease) -> StopRequest | None:
        """What the worker adds to a run's execution: wake-ups, its shutdown stop, its housekeeping."""
        if self.listener is not None and any(
                channel == RECONNECTED or (channel == CANCEL_CHANNEL and payload == str(lease.run_id))
                for channel, payload in self.listener.poll()):
            lease.check_now()  # a cancel may have been asked (or missed while LISTEN was down)
        if self._stopping.is_set():
            if self._shutdown_deadline is None:
                self._shutdown_deadline = time.monotonic() + self.shutdown_grace_seconds
            if self._hurry.is_set() or time.monotonic() >= self._shutdown_deadline:
                grace = self.settings.kill_grace_seconds
                return StopRequest(STOP_SHUTDOWN, grace_seconds=min(grace, 2.0) if self._hurry.is_set() else grace)
        try:
            self._housekeeping()
        except DB_ERRORS:
            db.session.rollback()
        return None

    # -- housekeeping: own heartbeat, recovering others' expired leases -----------------------
    def _housekeeping(self) -> None:
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self.heartbeat_seconds
        run = self.current_run
        state = registry.STOPPING if self._stopping.is_set() else (registry.RUNNING if run else registry.IDLE)
        registry.heartbeat(self.worker_id, state, run.id if run else None, self.runs_done)
        for _ in range(100):  # bounded per pass; the next pass takes the rest
            recovered = queue_store.recover_one_expired_lease(self.lease_timeout_seconds)
            if recovered is None:
                break
            log.warning("worker %s: recovered run %s from a lost worker: now %s", self.worker_id, *recovered)
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


def serve(app: Flask, exit_when_idle: bool = False) -> Worker:
    """Run a worker in this process until SIGTERM/SIGINT; the entry point of worker.py."""
    worker = Worker(app, exit_when_idle=exit_when_idle)
    worker.install_signal_handlers()
    instruments.start_worker_metrics_server(app.config["WORKER_METRICS_PORT"], app.config["WORKER_METRICS_HOST"])
    with app.app_context():
        worker.run()
    return worker
