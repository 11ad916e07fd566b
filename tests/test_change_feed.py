"""The change feed: a web process serves a poll from what it has read, and only until Postgres says that
changed. Writes come from a second connection here, as they would from a worker on another host."""
import contextlib
import time
import uuid

import psycopg2
import pytest
from sqlalchemy import event, text

from app import change_feed
from app.extensions import db
from tests.helpers import submit, wait_for


@pytest.fixture
def elsewhere(database_url):
    """Run SQL on a connection of its own, committed at once: another process's write."""
    dsn = database_url.replace("postgresql+psycopg2://", "postgresql://", 1)

    def run(sql: str, **params) -> None:
        with contextlib.closing(psycopg2.connect(dsn)) as connection, connection, connection.cursor() as cursor:
            cursor.execute(sql, params)
        db.session.expire_all()  # the tests' requests share one session: drop what it loaded before
    return run


@contextlib.contextmanager
def statements():
    """The SQL statements this process sends while the block runs."""
    seen: list[str] = []

    def note(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", note)


def live_feed():
    feed = change_feed.current()
    wait_for(lambda: feed.live, timeout=30)
    return feed


def fragment(client, run_id, etag=None):
    return client.get(f"/runs/{run_id}/status?seen=running", headers={"If-None-Match": etag} if etag else {})


def start(elsewhere, run_id):
    elsewhere("UPDATE tunix_runs SET status = 'running', worker_id = 'w', attempt = 1, started_at = now(), "
              "version = version + 1 WHERE id = %(id)s", id=run_id)


def test_an_unchanged_poll_reads_nothing_and_another_process_s_change_is_seen(client, elsewhere):
    feed = live_feed()
    run_id = submit(client)["run_id"]
    start(elsewhere, run_id)
    feed.sync()
    first = fragment(client, run_id)
    assert first.status_code == 200 and "Running" in first.get_data(as_text=True)
    with statements() as sent:
        again = fragment(client, run_id, first.headers["ETag"])
        plain = fragment(client, run_id)
    assert again.status_code == 304 and plain.status_code == 200 and plain.data == first.data
    assert sent == []  # sign-in, validator and body all came from what this process had read

    elsewhere("UPDATE tunix_runs SET status = 'completed', completed_at = now(), version = version + 1 "
              "WHERE id = %(id)s", id=run_id)
    assert feed.sync()
    done = fragment(client, run_id, first.headers["ETag"])
    assert done.status_code == 200 and "Completed" in done.get_data(as_text=True)


def test_a_change_to_the_user_is_seen_by_the_next_request(client, elsewhere, credentials):
    feed = live_feed()
    run_id = submit(client)["run_id"]
    assert client.get(f"/runs/{run_id}/status").status_code == 200
    elsewhere("DELETE FROM users WHERE username = %(name)s", name=credentials.username)
    assert feed.sync()
    refused = client.get(f"/runs/{run_id}/status", headers={"HX-Request": "true"})
    assert refused.status_code == 401 and "HX-Redirect" in refused.headers


def test_the_queue_moving_and_a_worker_arriving_reach_a_pending_run_s_block(client, elsewhere):
    feed = live_feed()
    ahead = submit(client)["run_id"]
    mine = submit(client)["run_id"]
    first = client.get(f"/runs/{mine}/status?seen=pending")
    body = first.get_data(as_text=True)
    assert "position 2 in the queue" in body and "No worker is running" in body
    assert client.get(f"/runs/{mine}/status?seen=pending",
                      headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    start(elsewhere, ahead)
    elsewhere("INSERT INTO workers (id, host, pid, state, started_at, last_seen_at) "
              "VALUES ('w-elsewhere', 'h', 1, 'idle', now(), now())")
    assert feed.sync()
    moved = client.get(f"/runs/{mine}/status?seen=pending", headers={"If-None-Match": first.headers["ETag"]})
    body = moved.get_data(as_text=True)
    assert moved.status_code == 200 and "position 1 in the queue" in body and "No worker is running" not in body


def test_a_cut_feed_connection_forgets_what_was_cached(client, elsewhere):
    feed = live_feed()
    run_id = submit(client)["run_id"]
    start(elsewhere, run_id)
    feed.sync()
    etag = fragment(client, run_id).headers["ETag"]
    epoch = feed._epoch
    # Cut the feed's connection, as a server restart or a network fault would, and change the run at
    # once: its notification may be sent before the feed listens again, and be lost.
    elsewhere("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %(name)s",
              name=f"tunix-rt-feed {feed.pid}")
    elsewhere("UPDATE tunix_runs SET status = 'failed', completed_at = now(), version = version + 1 "
              "WHERE id = %(id)s", id=run_id)
    wait_for(lambda: feed._epoch > epoch and feed.live, timeout=60)
    failed = fragment(client, run_id, etag)
    assert failed.status_code == 200 and "Failed" in failed.get_data(as_text=True)
    with statements() as sent:
        assert fragment(client, run_id, failed.headers["ETag"]).status_code == 304
    assert sent == []  # listening again, it serves from memory again


def test_a_read_that_raced_a_notification_is_not_kept(app):
    feed = live_feed()
    cache = change_feed.FeedCache(change_feed.RUNS, size=4)
    key = str(uuid.uuid4())
    reads = []

    def read_while_it_changes():
        reads.append(1)
        feed._hear([(change_feed.RUN_CHANGED, key)], connected=True)  # its notification lands mid-read
        return "old"

    assert cache.get(key, read_while_it_changes) == "old"
    assert cache.get(key, lambda: "new") == "new"  # the raced read was not kept
    assert cache.get(key, lambda: "newer") == "new"  # this one was
    db.session.execute(text("SELECT 1"))
    db.session.commit()  # this process wrote: it reads again
    assert cache.get(key, lambda: "after commit") == "after commit"
    feed._hear([], connected=False)  # while the feed is down, every read goes to the database
    try:
        assert feed.mark(change_feed.RUNS) is None
        assert [cache.get(key, lambda: n) for n in (1, 2)] == [1, 2]
    finally:
        feed._hear([], connected=feed._thread.is_alive())


def test_an_idle_pooled_connection_that_was_cut_is_replaced_before_use(app_config, database_url, elsewhere):
    from app import create_app

    other = create_app({**app_config, "DB_PING_IDLE_SECONDS": 0.0})
    with other.app_context():
        pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar()
        db.session.remove()  # back to the pool, idle
        elsewhere("SELECT pg_terminate_backend(%(pid)s)", pid=pid)
        wait_for(lambda: not _backend_alive(database_url, pid), timeout=10)
        assert db.session.execute(text("SELECT pg_backend_pid()")).scalar() != pid
        db.session.remove()
        db.engine.dispose()


def _backend_alive(database_url, pid) -> bool:
    dsn = database_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    with contextlib.closing(psycopg2.connect(dsn)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
        return cursor.fetchone() is not None


def test_an_api_poll_reads_nothing_until_its_run_or_its_token_changes(client, elsewhere):
    feed = live_feed()
    run_id = submit(client)["run_id"]
    assert client.get(f"/api/tunix/runs/{run_id}/status").get_json()["status"] == "pending"
    with statements() as sent:
        assert client.get(f"/api/tunix/runs/{run_id}/status").get_json()["status"] == "pending"
    assert sent == []  # token, owner and status all from memory (its use was noted at the first call)
    start(elsewhere, run_id)
    assert feed.sync()
    assert client.get(f"/api/tunix/runs/{run_id}/status").get_json()["status"] == "running"
    elsewhere("DELETE FROM api_tokens")  # revoked, from another host
    assert feed.sync()
    assert client.get(f"/api/tunix/runs/{run_id}/status").status_code == 401
    assert client.get(f"/api/tunix/runs/{uuid.uuid4()}/status").status_code == 401


def test_a_probe_that_does_not_come_back_takes_the_feed_down_until_one_does(app):
    # A LISTEN that hears nothing (behind a transaction-mode pooler, say) looks healthy from its side;
    # only a notification sent from elsewhere and heard here proves it.
    feed = live_feed()
    cache = change_feed.FeedCache(change_feed.RUNS, size=4)
    assert cache.get("k", lambda: "kept") == "kept" and cache.get("k", lambda: "read again") == "kept"
    with feed._cond:
        feed._probe = change_feed._Probe("a token nobody sends", time.monotonic() - change_feed.PROBE_TIMEOUT_SECONDS)
    feed._hear([], connected=True)
    assert not feed.live and feed.mark(change_feed.RUNS) is None
    assert cache.get("k", lambda: "read again") == "read again"
    wait_for(lambda: feed.live, timeout=30)  # the next probe came back
    assert cache.get("k", lambda: "after") == "after"  # what was kept before is not trusted again
