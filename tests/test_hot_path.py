"""What every open page pays for: the status fragment's conditional requests and bounded reads, queue
positions and run counts that cost the same at any table size, and keyset pages read by index."""
import uuid

from sqlalchemy import text

from app.extensions import db
from app.runs import chart_series, counts, queries
from tests.helpers import SAMPLE, submit


def fragment(client, run_id, etag=None, query=""):
    headers = {"If-None-Match": etag} if etag else {}
    return client.get(f"/runs/{run_id}/status{query}", headers=headers)


def start(run_id):
    db.session.execute(text("UPDATE tunix_runs SET status = 'running', worker_id = 'w', attempt = 1, "
                            "started_at = now(), version = version + 1 WHERE id = :id"), {"id": run_id})
    db.session.commit()


def test_an_unchanged_fragment_is_answered_304_and_a_change_is_seen(client):
    from app.execution.recorder import ProgressRecorder

    run_id = submit(client)["run_id"]
    start(run_id)
    first = fragment(client, run_id, query="?log_after=0&seen=running")
    assert first.status_code == 200 and first.headers["Cache-Control"] == "private, no-cache"
    etag = first.headers["ETag"]
    again = fragment(client, run_id, etag, "?log_after=0&seen=running")
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag

    recorder = ProgressRecorder(uuid.UUID(run_id))
    recorder.on_event({"event": "start", "total_steps": 10})
    recorder.on_event({"event": "step", "step": 1, "loss": 3.0})
    changed = fragment(client, run_id, etag, "?log_after=0&seen=running")
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert "step 1 of 10" in changed.get_data(as_text=True)
    recorder.on_output("stdout", b"hello\n")
    recorder.flush()
    logged = fragment(client, run_id, changed.headers["ETag"], "?log_after=0&seen=running")
    assert logged.status_code == 200 and "hello" in logged.get_data(as_text=True)
    # Another URL (the next log position) is another resource: no cross-talk between validators.
    assert fragment(client, run_id, logged.headers["ETag"], "?log_after=1&seen=running").status_code == 200
    assert fragment(client, "not-a-run", etag).status_code == 404


def test_a_pending_fragment_changes_when_the_queue_moves(client):
    ahead = submit(client)["run_id"]
    mine = submit(client)["run_id"]
    first = fragment(client, mine, query="?seen=pending")
    assert "position 2 in the queue" in first.get_data(as_text=True)
    assert fragment(client, mine, first.headers["ETag"], "?seen=pending").status_code == 304
    client.post(f"/api/tunix/runs/{ahead}/cancel")  # the run ahead leaves: this one's row did not change
    moved = fragment(client, mine, first.headers["ETag"], "?seen=pending")
    assert moved.status_code == 200 and "position 1 in the queue" in moved.get_data(as_text=True)


def test_a_poll_without_log_after_reads_no_output_but_says_where_it_ends(client):
    from app.execution.recorder import ProgressRecorder

    run_id = submit(client)["run_id"]
    start(run_id)
    recorder = ProgressRecorder(uuid.UUID(run_id))
    for i in range(3):
        recorder.on_output("stdout", f"line {i}\n".encode())
        recorder.flush()
    body = fragment(client, run_id).get_data(as_text=True)
    assert "line 0" not in body and "log_after=3" in body
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "line 0" in page and "line 2" in page  # the page itself shows the tail


def test_the_chart_series_stays_bounded_and_spread_at_any_length(client):
    state = chart_series.empty()
    for step in range(1, 5001):
        chart_series.add(state, "train", step, 5.0 / step)
    drawn = chart_series.for_drawing(state)["train"]
    assert len(drawn) <= 2 * chart_series.MAX_POINTS + 1
    assert drawn[0]["step"] == 1 and drawn[-1]["step"] == 5000
    gaps = {b["step"] - a["step"] for a, b in zip(drawn, drawn[1:-1])}
    assert gaps == {8}, gaps  # evenly spread: every 8th step kept
    # A resumed run records its steps again from the checkpoint: the tail is replaced, not doubled.
    chart_series.add(state, "train", 4000, 1.0)
    assert chart_series.for_drawing(state)["train"][-1] == {"step": 4000, "loss": 1.0}
    assert all(p["step"] <= 4000 for p in chart_series.for_drawing(state)["train"])


def test_the_recorder_keeps_the_chart_row_and_the_fragment_draws_from_it(client):
    from app.execution.recorder import ProgressRecorder

    run_id = submit(client)["run_id"]
    start(run_id)
    recorder = ProgressRecorder(uuid.UUID(run_id), flush_seconds=3600)
    recorder.on_event({"event": "start", "total_steps": 3000})
    for step in range(1, 3001):
        recorder.on_event({"event": "step", "step": step, "loss": 6.0 - step / 1000})
        if step % 500 == 0:
            recorder.on_event({"event": "eval", "step": step, "loss": 6.5 - step / 1000})
            recorder.flush()
    series, version = queries.chart_of(uuid.UUID(run_id))
    assert version is not None and len(series["train"]) <= 801 and series["train"][-1]["step"] == 3000
    assert [p["step"] for p in series["eval"]] == [500, 1000, 1500, 2000, 2500, 3000]
    assert db.session.scalar(text("SELECT count(*) FROM run_metrics WHERE run_id = :id"), {"id": run_id}) == 3006
    body = fragment(client, run_id).get_data(as_text=True)
    assert 'class="series-train"' in body and "5.999 at step 1" in body and "3 at step 3000" in body


def test_queue_positions_are_counted_only_up_to_a_bound(client):
    mine = submit(client)["run_id"]
    db.session.execute(text(
        "INSERT INTO tunix_runs (id, status, mode, dataset_key, model_id, config, created_at, queued_at) "
        "SELECT gen_random_uuid(), 'pending', 'async', :ds, 'tiny', '{}'::jsonb, now(), "
        "now() - interval '1 hour' - g * interval '1 millisecond' FROM generate_series(1, 500) g"), {"ds": SAMPLE})
    db.session.commit()
    body = fragment(client, mine).get_data(as_text=True)
    assert "over 200 runs ahead" in body
    position = queries.queue_position(queries.get_run(mine))
    assert position.position == 201 and not position.exact


def test_run_counts_follow_every_change_and_a_recount_repairs_drift(client, app):
    for _ in range(3):
        submit(client)
    cancelled = submit(client)["run_id"]
    client.post(f"/api/tunix/runs/{cancelled}/cancel")
    submit(client, "dry_run")
    runs, recoveries = counts.read()
    exact = dict(((s, m), n) for s, m, n in db.session.execute(text(
        "SELECT status, mode, count(*) FROM tunix_runs GROUP BY status, mode")).all())
    assert {k: v for k, v in runs.items() if v} == exact and recoveries == 0
    assert exact[("pending", "async")] == 3 and exact[("cancelled", "async")] == 1
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'tunix_runs{mode="async",status="pending"} 3.0' in scrape

    # Something bypasses the trigger (as a TRUNCATE does): the periodic recount puts it right.
    db.session.execute(text("DELETE FROM run_counters"))
    db.session.commit()
    assert counts.read() == ({}, 0)
    assert counts.reconcile(every_seconds=3600)
    assert {k: v for k, v in counts.read()[0].items() if v} == exact
    assert not counts.reconcile(every_seconds=3600), "recounted again before its time"


def _plan(stmt) -> str:
    from sqlalchemy.dialects import postgresql

    sql = str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    db.session.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(r[0] for r in db.session.execute(text("EXPLAIN " + sql)))
    db.session.rollback()
    return plan


def test_deep_keyset_pages_use_an_index_condition(client):
    run = queries.get_run(submit(client)["run_id"])
    cursor = queries.encode_cursor(run.created_at, run.id)
    for filters in ({}, {"status": "pending"}, {"mode": "async"}, {"dataset_key": SAMPLE}):
        plan = _plan(queries.list_runs_query(cursor=cursor, **filters))
        # The position is part of the index condition, not a filter applied row by row from the top.
        assert "Index Cond:" in plan and "ROW(created_at, id) < ROW(" in plan, plan
        assert "Filter:" not in plan, plan
