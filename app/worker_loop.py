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

from app import metrics, run_queue, run_service, worker_registry
from app.extensions import db
from app.models import TunixRun
from app.queue_channels import CANCEL_CHANNEL
from app.run_lease import RunLease
from app.run_recorder import ProgressRecorder
from app.run_states import FAILED, LEASED_STATUSES
from app.tunix_execution import (STOP_LEASE_LOST, STOP_SHUTDOWN, ExecutionSettings, ProcessOutcome, StopRequest,
                                 parse_execution_result, run_tunix_subprocess)

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
        self.log_max_bytes = int(config["LOG_MAX_BYTES"])
        self.listener = None
        self.runs_done = 0
        self.current_run: TunixRun | None = None
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        self._next_housekeeping = 0.0

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
            raise SystemExit("worker.py needs Postgres: the queue relies on SELECT ... FOR UPDATE SKIP LOCKED")
        if self.use_listen:
            from app.queue_listener import QueueListener

            self.listener = QueueListener(db.engine.url.set(drivername="postgresql").render_as_string(False),
                                          application_name=f"tunix-rt-listen {self.worker_id}")
        log.info("worker %s: started (%s, fallback poll every %.1f s, lease %.0f s, heartbeat %.0f s)",
                 self.worker_id, "LISTEN/NOTIFY" if self.use_listen else "polling only", self.poll_seconds,
                 self.lease_timeout_seconds, self.heartbeat_seconds)
        backoff = 1.0
        try:
            self._with_db_retry(lambda: worker_registry.register(self.worker_id, socket.gethostname(), os.getpid()))
            self._with_db_retry(worker_registry.prune_stopped)
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
        finally:
            self._deregister()
        log.info("worker %s: stopped after %d runs", self.worker_id, self.runs_done)

    def _wait_for_work(self) -> None:
        if self.listener is not None:
            self.listener.wait(self.poll_seconds, self._stopping)
        else:
            self._stopping.wait(self.poll_seconds)

    def run_once(self) -> bool:
        """Claim and carry out one run; False when none was pending."""
        run = run_queue.claim_next_run(self.worker_id)
        if run is None:
            return False
        log.info("worker %s: claimed run %s (attempt %d of %d)", self.worker_id, run.id, run.attempt,
                 run.max_attempts)
        self.current_run = run
        try:
            self.execute(run)
        finally:
            self.current_run = None
        self.runs_done += 1
        return True

    # -- housekeeping: own heartbeat, recovering others' expired leases -----------------------
    def _housekeeping(self) -> None:
        if time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self.heartbeat_seconds
        run = self.current_run
        worker_registry.heartbeat(self.worker_id, "stopping" if self._stopping.is_set() else
                                  ("running" if run else "idle"), run.id if run else None, self.runs_done)
        for _ in range(100):  # bounded per pass; the next pass takes the rest
            recovered = run_service.recover_one_expired_lease(self.lease_timeout_seconds)
            if recovered is None:
                break
            log.warning("worker %s: recovered run %s from a lost worker: now %s", self.worker_id, *recovered)

    def _deregister(self) -> None:
        try:
            worker_registry.heartbeat(self.worker_id, "stopped", None, self.runs_done)
        except DB_ERRORS:
            db.session.rollback()
        if self.listener is not None:
            self.listener.close()

    # -- one run -------------------------------------------------------------------------
    def execute(self, run: TunixRun) -> None:
        """Run the trainer for a claimed run and persist the outcome; the run never stays running."""
        attempt = run.attempt
        lease = RunLease(run.id, self.worker_id, attempt, self.heartbeat_seconds, self.settings.kill_grace_seconds)
        try:
            run_dir = run_service.prepare_run_directory(run, self.settings.artifacts_root)
            recorder = ProgressRecorder(run.id, log_max_bytes=self.log_max_bytes)
            outcome = run_tunix_subprocess(
                run_dir, command=self.settings.command, timeout_seconds=self.settings.timeout_seconds,
                output_max_bytes=self.settings.output_max_bytes, kill_grace_seconds=self.settings.kill_grace_seconds,
                on_event=recorder.on_event, on_output=recorder.on_output,
                on_tick=self._tick_handler(run, lease, recorder))
            recorder.flush()
        except Exception as exc:
            log.exception("worker %s: run %s failed inside the worker", self.worker_id, run.id)
            db.session.rollback()
            reason = f"worker error ({type(exc).__name__}: {str(exc)[:300]}); the worker log has the details"
            self._with_db_retry(lambda: run_service.transition(
                run.id, LEASED_STATUSES, FAILED, held_by=self.worker_id, held_attempt=attempt, error_message=reason))
            return
        self._settle(run, attempt, outcome)

    def _tick_handler(self, run: TunixRun, lease: RunLease, recorder: ProgressRecorder):
        shutdown_deadline: list[float] = []

        def on_tick() -> StopRequest | None:
            recorder.on_tick()
            if self.listener is not None and any(
                    channel == CANCEL_CHANNEL and payload == str(run.id) for channel, payload in self.listener.poll()):
                lease.check_now()
            stop = lease.tick()
            if stop is not None:
                return stop
            if self._stopping.is_set():
                if not shutdown_deadline:
                    shutdown_deadline.append(time.monotonic() + self.shutdown_grace_seconds)
                if self._hurry.is_set() or time.monotonic() >= shutdown_deadline[0]:
                    grace = min(self.settings.kill_grace_seconds, 2.0) if self._hurry.is_set() \
                        else self.settings.kill_grace_seconds
                    return StopRequest(STOP_SHUTDOWN, grace_seconds=grace)
            try:
                self._housekeeping()
            except DB_ERRORS:
                db.session.rollback()
            return None

        return on_tick

    def _settle(self, run: TunixRun, attempt: int, outcome: ProcessOutcome) -> None:
        """Persist what the execution came to, as long as this worker still holds the run."""
        if outcome.stop_reason == STOP_LEASE_LOST:
            log.error("worker %s: run %s: lease lost; its trainer was killed and nothing is stored by this worker",
                      self.worker_id, run.id)
            return
        if outcome.stop_reason == STOP_SHUTDOWN:
            handed = self._with_db_retry(lambda: run_service.hand_back(
                run.id, self.worker_id, attempt, f"handed back by worker {self.worker_id} on shutdown"))
            log.info("worker %s: run %s handed back to the queue (pending again, attempt not counted)%s",
                     self.worker_id, run.id, "" if handed else ": refused, it had moved on")
            return
        result = parse_execution_result(outcome, timeout_seconds=self.settings.timeout_seconds,
                                        output_max_bytes=self.settings.output_max_bytes)
        stored = self._with_db_retry(lambda: run_service.finish_run(run, result, held_by=self.worker_id,
                                                                    attempt=attempt))
        if self._stopping.is_set():
            log.info("worker %s: run %s finished within the shutdown grace", self.worker_id, run.id)
        log.info("worker %s: run %s finished %s (exit code %s)%s", self.worker_id, run.id, result.status,
                 result.exit_code, "" if stored else "; not stored: the run had moved on")

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
    metrics.start_worker_metrics_server(app.config["WORKER_METRICS_PORT"])
    with app.app_context():
        worker.run()
    return worker
