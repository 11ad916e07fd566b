"""A LISTEN connection to Postgres: it wakes a worker the moment a run is queued or a cancel is
asked, and tells each web process which cached reads changed (app.change_feed).

LISTEN needs a session-mode connection to Postgres: behind a transaction-mode pooler
(PgBouncer in transaction mode) notifications never arrive, and the worker falls back
to polling every TUNIX_WORKER_POLL_SECONDS (and a web process to reading every time). A dropped
connection is noticed, logged and re-established. A notification sent while the connection was
down is lost, so a re-established connection reports RECONNECTED: the worker then looks at the
queue (and at its run's cancel flag) at once, and a web process forgets what it cached.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time

import psycopg2
import psycopg2.extensions

log = logging.getLogger("tunix_rt.listen")

SLICE_SECONDS = 0.25  # how often a blocked wait looks at the stop flag
RECONNECT_MAX_SECONDS = 30.0
# Not a Postgres channel: the listener's own word that notifications may have been missed.
RECONNECTED = "tunix_rt_listen_reconnected"


class Listener:
    """One autocommit connection LISTENing on the given channels."""

    def __init__(self, dsn: str, channels: tuple[str, ...], application_name: str):
        self.dsn, self.channels, self.application_name = dsn, channels, application_name
        self.conn: psycopg2.extensions.connection | None = None
        self._pending: list[tuple[str, str]] = []
        self._retry_at = 0.0
        self._backoff = 1.0
        self.reconnects = 0
        # A byte written here ends a wait at once: the worker's own threads wake it (a run or an answer ended)
        # without waiting out a slice of the select.
        self._interrupt_r, self._interrupt_w = os.pipe()
        os.set_blocking(self._interrupt_r, False)
        os.set_blocking(self._interrupt_w, False)
        self._connect()

    def interrupt(self) -> None:
        """End the current (or next) wait now; safe from any thread (and a no-op once closed)."""
        if self._interrupt_w < 0:
            return
        try:
            os.write(self._interrupt_w, b"!")
        except (BlockingIOError, OSError):  # already woken (the pipe is full) or closed
            pass

    def _drain_interrupts(self) -> None:
        try:
            while os.read(self._interrupt_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def _connect(self) -> None:
        try:
            conn = psycopg2.connect(self.dsn, application_name=self.application_name[:63], keepalives=1,
                                    keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                                    connect_timeout=5)
            conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with conn.cursor() as cur:
                for channel in self.channels:
                    cur.execute(f"LISTEN {channel}")
        except psycopg2.Error as exc:
            self.conn = None
            self._retry_at = time.monotonic() + self._backoff
            log.warning("LISTEN connection unavailable (%s); polling, retrying in %.0f s",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, self._backoff)
            self._backoff = min(self._backoff * 2, RECONNECT_MAX_SECONDS)
            return
        if self.reconnects or self._backoff > 1.0:
            log.info("LISTEN connection re-established on %s", ", ".join(self.channels))
            self._pending.append((RECONNECTED, ""))
        self.conn, self._backoff = conn, 1.0
        self.reconnects += 1

    def _broken(self, exc: Exception) -> None:
        log.warning("LISTEN connection lost (%s); polling until it is back", type(exc).__name__)
        try:
            self.conn.close()
        except psycopg2.Error:
            pass
        self.conn = None
        self._retry_at = time.monotonic()

    def _ensure(self) -> None:
        if not self.connected and time.monotonic() >= self._retry_at:
            self._connect()

    def _collect(self) -> None:
        self.conn.poll()
        while self.conn.notifies:
            note = self.conn.notifies.pop(0)
            self._pending.append((note.channel, note.payload))

    def poll(self) -> list[tuple[str, str]]:
        """Notifications that arrived so far (and RECONNECTED after a reconnection), without waiting."""
        self._ensure()
        if self.connected:
            try:
                self._collect()
            except psycopg2.Error as exc:
                self._broken(exc)
        found, self._pending = self._pending, []
        return found

    def wait(self, timeout: float, stop: threading.Event) -> list[tuple[str, str]]:
        """Block until a notification, `timeout` seconds, or `stop`; returns what arrived."""
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            found = self.poll()
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.check_alive()
                return []
            if not self.connected:
                stop.wait(min(SLICE_SECONDS, remaining))
                continue
            try:
                ready, _, _ = select.select([self.conn, self._interrupt_r], [], [], min(SLICE_SECONDS, remaining))
            except (OSError, ValueError) as exc:
                self._broken(exc)
                continue
            if self._interrupt_r in ready:
                self._drain_interrupts()
        return []

    def check_alive(self) -> None:
        """Ask the connection something: one can die without a word (server restart, network)."""
        if not self.connected:
            return
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1")
            self._collect()
        except psycopg2.Error as exc:
            self._broken(exc)

    def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        # A closed descriptor's number is soon another file's: forget them before closing.
        descriptors, self._interrupt_r, self._interrupt_w = (self._interrupt_r, self._interrupt_w), -1, -1
        for fd in descriptors:
            try:
                os.close(fd)
            except OSError:
                pass
