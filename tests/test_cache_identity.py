"""A cache is a promise: what a process keeps for one run (or viewer) is never served for another.

Many runs are driven to the same version and status, as a worker would leave them, then polled with the
same query strings in any order: every fragment, ETag and status JSON must belong to the run it was asked for.
"""
import contextlib
import re

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from app import change_feed
from app.extensions import db
from tests.helpers import make_user, sign_in, submit, wait_for

RUNS = 6
QUERIES = ("", "seen=running", "seen=completed", "log_after=0&seen=running", "log_after=2&seen=completed")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _drive_to(database_url: str, run_ids: list[str], status: str) -> None:
    """Give every run the same version and status, each with its own progress and times (another connection,
    as a worker on another host writes)."""
    dsn = database_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    with contextlib.closing(psycopg2.connect(dsn)) as connection, connection, connection.cursor() as cursor:
        for index, run_id in enumerate(run_ids):
            finished = status != "running"
            cursor.execute(
                "UPDATE tunix_runs SET status = %(status)s, worker_id = 'w', attempt = 1, version = 7, "
                "queued_at = coalesce(queued_at, now()), started_at = now() - make_interval(secs => %(age)s), "
                "heartbeat_at = now(), completed_at = CASE WHEN %(finished)s THEN now() END, "
                "duration_seconds = CASE WHEN %(finished)s THEN %(age)s END, "
                "progress = jsonb_build_object('step', %(step)s, 'total_steps', %(total)s, "
                "'elapsed_seconds', %(age)s, 'loss', %(loss)s) WHERE id = %(id)s",
                {"status": status, "age": 10.0 + index, "finished": finished, "step": index + 1,
                 "total": 50 + index, "loss": 1.0 + index / 10, "id": run_id})
    db.session.expire_all()


@pytest.fixture
def polled_runs(client, database_url):
    def make(status: str) -> list[str]:
        feed = change_feed.current()
        wait_for(lambda: feed.live, timeout=30)
        run_ids = [submit(client)["run_id"] for _ in range(RUNS)]
        _drive_to(database_url, run_ids, status)
        wait_for(lambda: True)  # the feed has heard the writes
        return run_ids
    return make


def _belongs_to(body: str, run_ids: list[str], index: int) -> None:
    own = run_ids[index]
    assert set(UUID.findall(body)) == {own}, f"run {index}'s fragment names {set(UUID.findall(body)) - {own}}"
    assert f"step {index + 1} of {50 + index}" in body


polls = st.lists(st.tuples(st.integers(0, RUNS - 1), st.sampled_from(QUERIES), st.integers(0, RUNS - 1)),
                 min_size=10, max_size=40)


@pytest.mark.parametrize("status", ["running", "completed"])
def test_fragments_and_etags_of_runs_at_the_same_version_never_cross(client, polled_runs, status):
    run_ids = polled_runs(status)
    owner_of_etag: dict[str, int] = {}
    etag_of: dict[tuple[int, str], str] = {}

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(polls)
    def poll_in_any_order(sequence):
        for index, query, other in sequence:
            # Half the polls revalidate with the ETag another run's page holds: that must never answer 304.
            sent = etag_of.get((other, query))
            response = client.get(f"/runs/{run_ids[index]}/status?{query}",
                                  headers={"If-None-Match": sent} if sent else {})
            etag = response.headers["ETag"].strip('"')
            if response.status_code == 304:
                assert other == index, "another run's validator matched"
            else:
                assert response.status_code == 200
                _belongs_to(response.get_data(as_text=True), run_ids, index)
            assert owner_of_etag.setdefault(etag, index) == index, "two runs answered with one ETag"
            etag_of[(index, query)] = etag

    poll_in_any_order()
    assert len(owner_of_etag) == len(set(owner_of_etag)) >= RUNS


def test_the_api_status_of_runs_at_the_same_version_never_crosses(client, polled_runs):
    run_ids = polled_runs("completed")
    expected = {run_id: client.get(f"/api/tunix/runs/{run_id}").get_json() for run_id in run_ids}

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.integers(0, RUNS - 1), min_size=10, max_size=40))
    def ask_in_any_order(order):
        for index in order:
            status = client.get(f"/api/tunix/runs/{run_ids[index]}/status").get_json()
            detail = expected[run_ids[index]]
            assert status["run_id"] == run_ids[index]
            assert (status["started_at"], status["completed_at"]) == (detail["started_at"], detail["completed_at"])

    ask_in_any_order()


def test_a_kept_fragment_is_never_served_to_another_viewer(app, client, polled_runs):
    run_ids = polled_runs("completed")
    other = sign_in(app.test_client(), make_user("someone-else"))
    mine = client.get(f"/runs/{run_ids[0]}/status?seen=completed")
    theirs = other.get(f"/runs/{run_ids[0]}/status?seen=completed")
    # The fragment carries the viewer's CSRF token (the Retry form): one viewer's copy is not another's.
    assert mine.headers["ETag"] != theirs.headers["ETag"]
    assert other.get(f"/runs/{run_ids[0]}/status?seen=completed",
                     headers={"If-None-Match": mine.headers["ETag"]}).status_code == 200
