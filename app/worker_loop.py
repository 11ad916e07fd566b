"""The worker's lifecycle: start, claim, execute, persist, and stop on SIGTERM/SIGINT.

Worker requires Postgres due to SKIP LOCKED semantics.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid

from flask import Flask
from sqlalchemy.exc import InterfaceError, OperationalError

from app import metrics, run_queue, run_service
from app.extensions import db
from app.models import TunixRun
from app.run_states import FAILED, RUNNING
from app.tunix_execution import ExecutionSettings, parse_execution_result, run_tunix_subprocess

log = logging.getLogger("tunix_rt.worker")

DB_RETRY_MAX_SECONDS = 30.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims pending runs one at a time and carries each out through the execution module."""

    def __init__(self, app: Flask, worker_id: str | None = None, exit_when_idle: bool = False):
        self.app = app
        self.worker_id = worker_id or new_worker_id()
        self.exit_when_idle = exit_when_idle
        self.settings = ExecutionSettings.from_config(app.config)
        self.poll_seconds = float(app.config["WORKER_POLL_SECONDS"])
        self._stopping = threading.Event()
        self.runs_done = 0

    def request_stop(self, signum: int | None = None, _frame=None) -> None:
        """Claim nothing new; the current run, if any, is finished first."""
        if not self._stopping.is_set():
            name = signal.Signals(signum).name if signum else "request"
            log.info("worker %s: %s received, stopping after the current run", self.worker_id, name)
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> None:
        """Loop until asked to stop (or, with exit_when_idle, until the queue is empty)."""
        if db.engine.dialect.name != "postgresql":
            raise SystemExit("worker.py needs Postgres: the queue relies on SELECT ... FOR UPDATE SKIP LOCKED")
        log.info("worker %s: started (poll every %.1f s)", self.worker_id, self.poll_seconds)
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                worked = self.run_once()
                backoff = 1.0
            except (OperationalError, InterfaceError) as exc:
                db.session.rollback()
                log.warning("worker %s: database unavailable (%s); retrying in %.0f s", self.worker_id,
                            type(exc).__name__, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_SECONDS)
                continue
            if not worked:
                if self.exit_when_idle:
                    break
                self._stopping.wait(self.poll_seconds)
        log.info("worker %s: stopped after %d runs", self.worker_id, self.runs_done)

    def run_once(self) -> bool:
        """Claim and carry out one run; False when none was pending."""
        run = run_queue.claim_next_run(self.worker_id)
        if run is None:
            return False
        log.info("worker %s: claimed run %s", self.worker_id, run.id)
        self.execute(run)
        self.runs_done += 1
        return True

    def execute(self, run: TunixRun) -> None:
        """Run the trainer for a claimed run and persist the outcome; the run never stays running."""
        try:
            run_dir = run_service.prepare_run_directory(run, self.settings.artifacts_root)
            recorder = run_service.ProgressRecorder(run.id)
            outcome = run_tunix_subprocess(
                run_dir, command=self.settings.command, timeout_seconds=self.settings.timeout_seconds,
                output_max_bytes=self.settings.output_max_bytes,
                kill_grace_seconds=self.settings.kill_grace_seconds,
                on_event=recorder.on_event, on_tick=recorder.on_tick)
            recorder.flush()
            result = parse_execution_result(outcome, timeout_seconds=self.settings.timeout_seconds,
                                            output_max_bytes=self.settings.output_max_bytes)
        except Exception as exc:
            log.exception("worker %s: run %s failed inside the worker", self.worker_id, run.id)
            db.session.rollback()
            self._persist(lambda: run_service.transition(run.id, RUNNING, FAILED, held_by=self.worker_id,
                                                         error_message=f"worker error ({type(exc).__name__}: {str(exc)[:300]}); "
                                                                       "the worker log has the details"))
            return
        self._persist(lambda: run_service.finish_run(run, result, held_by=self.worker_id))
        log.info("worker %s: run %s finished %s (exit code %s)", self.worker_id, run.id, result.status,
                 result.exit_code)

    def _persist(self, write) -> None:
        # The outcome must not be lost to a brief database outage: keep trying, with backoff.
        backoff = 1.0
        while True:
            try:
                write()
                return
            except (OperationalError, InterfaceError) as exc:
                db.session.rollback()
                log.warning("worker %s: cannot store the outcome yet (%s); retrying in %.0f s",
                            self.worker_id, type(exc).__name__, backoff)
                threading.Event().wait(backoff)
                backoff = min(backoff * 2, DB_RETRY_MAX_SECONDS)


def serve(app: Flask, exit_when_idle: bool = False) -> Worker:
    """Run a worker in this process until SIGTERM/SIGINT; the entry point of worker.py."""
    worker = Worker(app, exit_when_idle=exit_when_idle)
    worker.install_signal_handlers()
    metrics.start_worker_metrics_server(app.config["WORKER_METRICS_PORT"])
    with app.app_context():
        worker.run()
    return worker
