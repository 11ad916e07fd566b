"""What a web process has read from the database and may reuse until Postgres says it changed.

Every open run page asks for its status fragment every few seconds, and mostly nothing has
changed. So each process keeps one LISTEN connection (a daemon thread, started on first use) on
the channels that triggers notify (migration 0008): a run whose version or status changed, the
queue moving, a user or an API token changed or deleted, a worker's heartbeat. A cached read (`FeedCache`) holds
until a notification names its key, or its whole topic.

Nothing is served from memory while that connection is down: a lost connection means lost
notifications, so everything cached is forgotten the moment the loss is noticed, and reads go to
the database until the connection is back. Every few seconds a probe (a NOTIFY sent from another
connection) must come back through it; until the first does, or while one is overdue, the feed
counts as down: so a LISTEN that hears nothing (behind a transaction-mode pooler, or cut off
without a word) never leaves stale answers in memory for more than a moment. A commit made by this process forgets everything
too, so a process reads its own writes at once. Another process's commit is seen when its
notification arrives, which Postgres sends as that commit completes; `sync()` waits for it.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable, TypeVar

import psycopg2
from sqlalchemy import event
from sqlalchemy.orm import Session

from app.listen import RECONNECTED, Listener

log = logging.getLogger("tunix_rt.change_feed")

# The channels the triggers of migration 0008 notify, and what their payloads say.
RUN_CHANGED = "tunix_rt_run_changed"  # "<run id>", plus " queue" when it entered or left the queue; "queue" alone
USER_CHANGED = "tunix_rt_user_changed"  # "<user id>"
TOKEN_CHANGED = "tunix_rt_token_changed"  # "<token hash>": revoked, its use noted, or its user deleted
WORKER_CHANGED = "tunix_rt_worker_changed"  # "": some worker registered, heartbeated, stopped or was pruned
SYNC_CHANNEL = "tunix_rt_feed_sync"  # "<token>" that sync() waits for
CHANNELS = (RUN_CHANGED, USER_CHANGED, TOKEN_CHANGED, WORKER_CHANGED, SYNC_CHANNEL)

# What a cache follows: a notification on its channel names a key, or the whole topic.
RUNS, QUEUE, USERS, TOKENS, WORKERS = "runs", "queue", "users", "tokens", "workers"
TOPICS = (RUNS, QUEUE, USERS, TOKENS, WORKERS)
WHOLE = ""  # the key that stands for every key of a topic

CHECK_SECONDS = 5.0  # a probe goes round (NOTIFY from elsewhere, heard here) this often
PROBE_TIMEOUT_SECONDS = 2.0  # a probe not heard by then: nothing is served from memory until one is
RECENT_KEPT = 10_000  # keys whose latest notification is remembered per topic


@dataclass(frozen=True)
class Mark:
    """Where the feed stood when a read began: whatever is named after it makes that read stale."""

    epoch: int
    seen: int


class ChangeFeed:
    """One process's LISTEN connection and what it has heard, per topic."""

    def __init__(self, dsn: str):
        self.dsn, self.pid = dsn, os.getpid()
        self._cond = threading.Condition()
        self._live = False
        self._epoch = 0  # bumped whenever notifications may have been missed, or this process committed
        self._seen = dict.fromkeys(TOPICS, 0)  # notifications heard per topic
        self._named: dict[str, OrderedDict[Hashable, int]] = {t: OrderedDict() for t in TOPICS}
        self._forgotten_below = dict.fromkeys(TOPICS, 0)  # older namings are no longer remembered
        self._synced: set[str] = set()
        self._probe: _Probe | None = None
        self._proven_before = False
        self._thread = threading.Thread(target=self._follow, name="tunix-rt-change-feed", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        return self._live

    def mark(self, topic: str) -> Mark | None:
        """Where the feed stands now for `topic`; None while it is down (then nothing may be cached)."""
        with self._cond:
            return Mark(self._epoch, self._seen[topic]) if self._live else None

    def unchanged(self, topic: str, key: Hashable, since: Mark) -> bool:
        """True when nothing was heard about `key` (or its whole topic) since `since`, and none could be missed."""
        with self._cond:
            if not self._live or since.epoch != self._epoch:
                return False
            if self._seen[topic] == since.seen:
                return True
            if self._forgotten_below[topic] > since.seen:
                return False
            named = self._named[topic]
            return named.get(WHOLE, 0) <= since.seen and named.get(key, 0) <= since.seen

    def forget(self) -> None:
        """Make everything cached so far stale (this process committed: it must read its own writes)."""
        with self._cond:
            self._epoch += 1

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until every commit made before this call has been heard; False when the feed is down."""
        if not self._live:
            return False
        token = self._send_token()
        # Postgres delivers notifications in commit order: once this one is heard, so are all before it.
        with self._cond:
            return self._cond.wait_for(lambda: token in self._synced or not self._live, timeout) and self._live

    def _send_token(self, token: str | None = None) -> str:
        """NOTIFY a token (a new one unless given) on the sync channel from a connection of its own."""
        token = token or uuid.uuid4().hex
        connection = psycopg2.connect(self.dsn, application_name="tunix-rt-feed-probe", connect_timeout=5)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", (SYNC_CHANNEL, token))
        finally:
            connection.close()
        return token

    def _name(self, topic: str, key: Hashable) -> None:
        self._seen[topic] += 1
        named = self._named[topic]
        named[key] = self._seen[topic]
        named.move_to_end(key)
        while len(named) > RECENT_KEPT:
            _, when = named.popitem(last=False)
            self._forgotten_below[topic] = max(self._forgotten_below[topic], when)

    def _hear(self, heard: list[tuple[str, str]], connected: bool) -> None:
        with self._cond:
            if not connected or any(channel == RECONNECTED for channel, _ in heard):
                self._epoch += 1  # what was cached may have missed a notification
                self._probe = None  # and the connection must prove itself again
            for channel, payload in heard:
                if channel == SYNC_CHANNEL:
                    self._synced.add(payload)
                    if self._probe is not None and payload == self._probe.token:
                        self._probe.heard = True
                elif channel == RUN_CHANGED:
                    run_id, _, queue = payload.partition(" ")
                    if run_id and run_id != "queue":
                        self._name(RUNS, run_id)
                    if queue or run_id == "queue":
                        self._name(QUEUE, WHOLE)
                elif channel == USER_CHANGED:
                    self._name(USERS, payload)
                elif channel == TOKEN_CHANGED:
                    self._name(TOKENS, payload)
                elif channel == WORKER_CHANGED:
                    self._name(WORKERS, WHOLE)
            if len(self._synced) > 1000:
                self._synced.clear()
            live = connected and self._proven
            if self._live and not live:
                self._epoch += 1
            self._live = live
            self._cond.notify_all()

    @property
    def _proven(self) -> bool:
        """Whether the last probe came back, or the one in flight is not overdue yet."""
        probe = self._probe
        if probe is None:
            return False
        return probe.heard or (self._proven_before and time.monotonic() - probe.sent_at < PROBE_TIMEOUT_SECONDS)

    def _check(self) -> None:
        """Send a probe when one is due: a notification from another connection that must come back.
        LISTEN can look fine and hear nothing (a transaction-mode pooler in between, a network cut
        without a word), and then nothing may be served from memory."""
        with self._cond:
            probe = self._probe
            due = probe is None or (probe.heard and time.monotonic() - probe.sent_at >= CHECK_SECONDS) or (
                not probe.heard and time.monotonic() - probe.sent_at >= PROBE_TIMEOUT_SECONDS)
            if not due:
                return
            self._proven_before = probe is not None and probe.heard
            self._probe = _Probe(uuid.uuid4().hex, time.monotonic())  # before it is sent: it may come back at once
            token = self._probe.token
        try:
            self._send_token(token)
        except psycopg2.Error as exc:
            log.warning("change feed: cannot send its probe (%s); reading from the database meanwhile",
                        type(exc).__name__)

    def _follow(self) -> None:
        listener = Listener(self.dsn, CHANNELS, f"tunix-rt-feed {self.pid}")
        try:
            while True:
                heard = listener.poll()
                self._hear(heard, listener.connected)
                if not listener.connected:
                    time.sleep(0.25)
                    continue
                self._check()
                try:
                    ready = select.select([listener.conn], [], [], PROBE_TIMEOUT_SECONDS / 4)[0]
                except (OSError, ValueError):
                    ready = True  # the next poll notices what broke
                if not ready and self._probe is not None and not self._probe.heard and \
                        time.monotonic() - self._probe.sent_at >= PROBE_TIMEOUT_SECONDS:
                    listener.check_alive()  # overdue: maybe the connection itself is gone
        except Exception:  # a bug here must not leave stale caches behind: stop serving from them
            log.exception("the change feed stopped; reads go to the database from now on")
            raise
        finally:
            with self._cond:
                self._live = False
                self._epoch += 1
            listener.close()


@dataclass
class _Probe:
    token: str
    sent_at: float
    heard: bool = False


_feeds: dict[object, ChangeFeed] = {}  # by the engine's URL
_feeds_lock = threading.Lock()


def current() -> ChangeFeed:
    """This process's feed on the current app's database, started on first use (and again after a fork)."""
    from app.extensions import db

    url = db.engine.url
    found = _feeds.get(url)
    if found is not None and found.pid == os.getpid() and found._thread.is_alive():
        return found
    with _feeds_lock:
        found = _feeds.get(url)
        if found is None or found.pid != os.getpid() or not found._thread.is_alive():
            found = _feeds[url] = ChangeFeed(url.set(drivername="postgresql").render_as_string(False))
        return found


def sync_started(timeout: float = 5.0) -> None:
    """Wait until every feed this process has started has heard every commit made before this call."""
    for feed in list(_feeds.values()):
        if feed.pid == os.getpid() and feed.live:
            feed.sync(timeout)


@event.listens_for(Session, "after_commit")
def _forget_after_local_commit(session) -> None:
    for feed in list(_feeds.values()):
        if feed.pid == os.getpid():
            feed.forget()


V = TypeVar("V")


class FeedCache:
    """A map of reads, each valid until the feed names its key (or its whole topic); past `size`
    entries the oldest stored go first."""

    def __init__(self, topic: str, size: int):
        self.topic, self.size = topic, size
        self._entries: OrderedDict[Hashable, tuple[Mark, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value of `key`, or `load()`: kept unless it is None (nothing is ever named after what
        does not exist) or something about the key was heard while it was read."""
        feed = current()
        mark = feed.mark(self.topic)
        if mark is None:
            return load()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and feed.unchanged(self.topic, key, hit[0]):
            return hit[1]  # type: ignore[return-value]
        value = load()
        if value is not None and feed.unchanged(self.topic, key, mark):
            with self._lock:
                self._entries[key] = (mark, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return value
