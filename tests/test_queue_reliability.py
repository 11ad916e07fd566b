"""The queue never loses or strands a run: cancel, retry, leases, recovery, shutdown, wake-up, logs."""
import json
import re
import signal
import time
import uuid

import pytest
from sqlalchemy import text

from app.extensions import db
from app.models import TunixRun
from app.queue import store as queue_store
from app.runs import lifecycle
from app.runs.lifecycle import Lease
from tests.helpers import alive, fake_trainer_command, run_json, run_status, scratch_file, submit, wait_for

FAST_LEASE = {"TUNIX_HEARTBEAT_SECONDS": "0.5", "TUNIX_LEASE_TIMEOUT_SECONDS": "3"}


# -- state machine and leases, in process ------------------------------------------------

def test_terminal_runs_never_change(client):
    run_id = submit(client, "sync")["run_id"]
    for target in ("pending", "cancelling", "failed", "timeout", "cancelled"):
        assert not lifecycle.transition(uuid.UUID(run_id), "running", target)
    assert run_json(client, run_id)["status"] == "completed"
    with pytest.raises(lifecycle.InvalidTransition):
        lifecycle.transition(uuid.UUID(run_id), "completed", "running")


def test_a_worker_s_own_connection_claims_finishes_and_gives_way_to_its_session_s_lock(client):
    first, second = (uuid.UUID(submit(client)["run_id"]) for _ in range(2))
    with lifecycle.own_connection(lock_wait_ms=200):
        run = queue_store.claim_next_run("worker-a")
        assert run.id == first and run_status(client, str(first)) == "running"  # committed on its own
        # This thread's session holds the run's row, uncommitted: a finish on the own connection would
        # wait for it forever. It gives up after the lock wait and goes through the session instead.
        db.session.execute(text("UPDATE tunix_runs SET name = 'held by the session' WHERE id = :id"), {"id": first})
        assert lifecycle.finish(first, "completed", lease=run.lease)
        # A lost connection fails one move; the next opens another.
        backend = db.session.scalar(text("SELECT pid FROM pg_stat_activity WHERE application_name = :name "
                                         "AND datname = current_database()"), {"name": lifecycle.OWN_APPLICATION_NAME})
        db.session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        db.session.commit()
        with pytest.raises(Exception):
            queue_store.claim_next_run("worker-a")
        assert queue_store.claim_next_run("worker-a").id == second
    db.session.expire_all()
    assert run_json(client, str(first))["status"] == "completed" and run_json(client, str(first))["name"] == (
        "held by the session")


def test_only_the_lease_holder_can_write(client):
    run_id = uuid.UUID(submit(client)["run_id"])
    run = queue_store.claim_next_run("worker-a")
    assert run.id == run_id and run.lease == Lease("worker-a", 1)
    assert run_json(client, str(run_id))["heartbeat_at"] is not None
    assert queue_store.renew_lease(run_id, Lease("worker-a", 1)) == "running"
    assert queue_store.renew_lease(run_id, Lease("worker-b", 1)) is None  # not its run
    assert queue_store.renew_lease(run_id, Lease("worker-a", 2)) is None  # a stale attempt
    assert not lifecycle.finish(run_id, "completed", lease=Lease("worker-b", 1))
    assert lifecycle.finish(run_id, "completed", lease=Lease("worker-a", 1))


def _age_heartbeat(run_id, seconds: float):
    db.session.execute(text("UPDATE tunix_runs SET heartbeat_at = now() - make_interval(secs => :s) WHERE id = :id"),
                       {"s": seconds, "id": run_id})
    db.session.commit()


def test_expired_lease_is_requeued_while_attempts_remain_then_fails(client):
    run_id = uuid.UUID(submit(client, max_attempts=2)["run_id"])
    queue_store.claim_next_run("worker-a")
    _age_heartbeat(run_id, 30)
    assert queue_store.recover_one_expired_lease(60) is None  # still within the lease
    assert queue_store.recover_one_expired_lease(10) == (run_id, "pending")
    run = run_json(client, str(run_id))
    assert run["status"] == "pending" and run["worker_id"] is None and run["recoveries"] == 1
    assert "re-queued: worker lost (no heartbeat from worker-a" in run["error_message"]
    # The lost worker comes back: its lease is gone, so it cannot write.
    assert queue_store.renew_lease(run_id, Lease("worker-a", 1)) is None
    assert queue_store.claim_next_run("worker-b").lease.attempt == 2
    _age_heartbeat(run_id, 30)
    assert queue_store.recover_one_expired_lease(10) == (run_id, "failed")
    run = run_json(client, str(run_id))
    assert run["status"] == "failed" and run["error_message"].startswith("worker lost (no heartbeat from worker-b")


def test_hand_back_does_not_count_the_attempt(client):
    run_id = uuid.UUID(submit(client)["run_id"])
    queue_store.claim_next_run("worker-a")
    assert queue_store.hand_back(run_id, Lease("worker-a", 1), "handed back by worker-a on shutdown")
    run = run_json(client, str(run_id))
    assert run["status"] == "pending" and run["attempt"] == 0 and run["worker_id"] is None


# -- cancel and retry --------------------------------------------------------------------

def test_cancel_pending_is_immediate_and_terminal_runs_answer_409(client):
    run_id = submit(client)["run_id"]
    response = client.post(f"/api/tunix/runs/{run_id}/cancel")
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled" and response.get_json()["error_message"] == "cancelled by user"
    again = client.post(f"/api/tunix/runs/{run_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.get_json()["error"]
    assert client.post(f"/api/tunix/runs/{uuid.uuid4()}/cancel").status_code == 404


def test_retry_links_a_new_run_to_the_original(client):
    original = submit(client, "sync", seed=5)["run_id"]
    response = client.post(f"/api/tunix/runs/{original}/retry")
    assert response.status_code == 202
    retry = run_json(client, response.get_json()["run_id"])
    assert retry["status"] == "pending" and retry["retry_of"] == original and retry["config"]["seed"] == 5
    assert run_json(client, original)["retries"] == [retry["run_id"]]
    assert client.post(f"/api/tunix/runs/{retry['run_id']}/retry").status_code == 409  # not finished yet
    original_page = client.get(f"/runs/{original}").get_data(as_text=True)
    assert "Retried as" in original_page and retry["run_id"][:8] in original_page
    assert f"/runs/{original}" in client.get(f"/runs/{retry['run_id']}").get_data(as_text=True)


def test_cancel_and_retry_buttons_follow_the_status(client):
    run_id = submit(client)["run_id"]
    fragment = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    assert f'href="/runs/{run_id}/cancel"' in fragment and "/retry" not in fragment
    response = client.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 303
    fragment = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    assert f'action="/runs/{run_id}/retry"' in fragment and "/cancel" not in fragment
    new_page = client.post(f"/runs/{run_id}/retry")
    assert new_page.status_code == 303 and new_page.headers["Location"] != f"/runs/{run_id}"


def test_cancel_running_run_stops_its_process_group(client, worker_env, start_worker, scratch_root):
    run_id = submit(client)["run_id"]
    worker = start_worker(worker_env(fake_trainer_command("--spawn-child", "--sleep", "120"), **FAST_LEASE))
    wait_for(lambda: scratch_file(scratch_root, run_id, "pids.json") and run_status(client, run_id) == "running")
    pids = json.loads(scratch_file(scratch_root, run_id, "pids.json").read_text())
    response = client.post(f"/api/tunix/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.get_json()["status"] == "cancelling"
    wait_for(lambda: run_status(client, run_id) == "cancelled", timeout=30)
    run = run_json(client, run_id)
    assert run["error_message"] == "cancelled by user" and run["cancel_requested_at"]
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10)
    assert client.post(f"/api/tunix/runs/{run_id}/cancel").status_code == 409
    assert worker.poll() is None, "the worker carries on after a cancel"


# -- workers: kill -9, slow-but-alive, graceful shutdown -----------------------------------

def test_killed_worker_run_fails_as_worker_lost(client, worker_env, start_worker, scratch_root):
    run_id = submit(client)["run_id"]
    doomed = start_worker(worker_env(fake_trainer_command("--sleep", "120"), **FAST_LEASE))
    wait_for(lambda: scratch_file(scratch_root, run_id, "pids.json"))
    trainer_pid = json.loads(scratch_file(scratch_root, run_id, "pids.json").read_text())[0]
    doomed.kill()  # SIGKILL: no chance to clean up
    doomed.wait()
    wait_for(lambda: not alive(trainer_pid), timeout=10)  # the trainer dies with its worker
    start_worker(worker_env(fake_trainer_command(), **FAST_LEASE))
    wait_for(lambda: run_status(client, run_id) == "failed", timeout=30)
    run = run_json(client, run_id)
    assert run["error_message"].startswith("worker lost (no heartbeat from ") and run["recoveries"] == 1


def test_slow_but_alive_worker_keeps_its_run(client, worker_env, start_worker, tmp_path):
    record = tmp_path / "executions"
    record.mkdir()
    run_id = submit(client, max_attempts=3)["run_id"]
    env = worker_env(fake_trainer_command("--sleep", "8", "--record-dir", str(record)), **FAST_LEASE)
    start_worker(env)
    wait_for(lambda: run_status(client, run_id) == "running")
    start_worker(env)  # sweeps for expired leases every heartbeat while the run lasts 8 s > lease 3 s
    wait_for(lambda: run_status(client, run_id) == "completed", timeout=60)
    run = run_json(client, run_id)
    assert run["attempt"] == 1 and run["recoveries"] == 0
    assert len(list(record.iterdir())) == 1, "executed exactly once"


def test_sigterm_hands_the_run_back_after_the_grace(client, worker_env, start_worker, scratch_root):
    run_id = submit(client)["run_id"]
    worker = start_worker(worker_env(fake_trainer_command("--sleep", "120"),
                                     TUNIX_WORKER_SHUTDOWN_GRACE_SECONDS="1"))
    wait_for(lambda: scratch_file(scratch_root, run_id, "pids.json"))
    trainer_pid = json.loads(scratch_file(scratch_root, run_id, "pids.json").read_text())[0]
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0
    assert "gets up to 1 s to finish" in output
    assert f"run {run_id} handed back to the queue (pending again, attempt not counted)" in output
    run = run_json(client, run_id)
    assert run["status"] == "pending" and run["attempt"] == 0 and "on shutdown" in run["error_message"]
    assert not alive(trainer_pid)


def test_second_sigterm_hands_back_at_once(client, worker_env, start_worker, scratch_root):
    run_id = submit(client)["run_id"]
    worker = start_worker(worker_env(fake_trainer_command("--sleep", "120"),
                                     TUNIX_WORKER_SHUTDOWN_GRACE_SECONDS="600"))
    wait_for(lambda: scratch_file(scratch_root, run_id, "pids.json"))
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert "second SIGTERM: handing its runs back now" in output
    assert run_status(client, run_id) == "pending"


# -- wake-up ---------------------------------------------------------------------------------

def _listen_backends() -> list[int]:
    db.session.rollback()  # pg_stat_activity is a snapshot per transaction
    return list(db.session.scalars(text(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'tunix-rt-listen %'")))


def test_idle_worker_wakes_on_notify_and_claims_at_once_when_listen_comes_back(client, worker_env, start_worker):
    # A poll this slow cannot be what picks the runs up within the test's timeouts.
    worker = start_worker(worker_env(fake_trainer_command("--steps", "0"), TUNIX_WORKER_POLL_SECONDS="300"))
    first_connections = set(wait_for(lambda: _listen_backends(), timeout=30))
    first = submit(client)["run_id"]
    wait_for(lambda: run_status(client, first) == "completed", timeout=20)

    for pid in first_connections:
        db.session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    db.session.commit()
    # Queued while LISTEN is down or coming back: its NOTIFY may reach no connection at all.
    # The worker must still claim it when LISTEN is back, not at its next poll in 300 s.
    in_the_gap = submit(client)["run_id"]
    wait_for(lambda: set(_listen_backends()) - first_connections, timeout=30)  # a new LISTEN connection
    wait_for(lambda: run_status(client, in_the_gap) == "completed", timeout=20)

    after = submit(client)["run_id"]  # and NOTIFY works again on the new connection
    wait_for(lambda: run_status(client, after) == "completed", timeout=20)
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert "LISTEN connection lost" in output and "LISTEN connection re-established" in output


# -- live logs and the worker registry ---------------------------------------------------------

def test_output_is_stored_live_and_read_incrementally(client, app):
    app.config.update(TRAIN_COMMAND=fake_trainer_command("--stdout-bytes", "3000"), LOG_MAX_BYTES=100_000)
    run_id = submit(client, "sync")["run_id"]
    logs = client.get(f"/api/tunix/runs/{run_id}/logs").get_json()
    texts = [line["text"] for line in logs["lines"]]
    assert texts[0] == "fake trainer: 240 examples, model tiny" and texts[-1] == "x" * 99
    assert not any('"event"' in t for t in texts)
    assert client.get(f"/api/tunix/runs/{run_id}/logs?after={logs['next_after']}").get_json()["lines"] == []
    first_chunk = client.get(f"/api/tunix/runs/{run_id}/logs?after=0").get_json()
    assert first_chunk["lines"][0]["text"].startswith("fake trainer")
    fragment = client.get(f"/runs/{run_id}/status?log_after=0").get_data(as_text=True)
    assert 'hx-swap-oob="beforeend:#run-log"' in fragment and "fake trainer: 240 examples" in fragment
    assert "hx-swap-oob" not in client.get(f"/runs/{run_id}/status?log_after={logs['next_after']}").get_data(
        as_text=True)
    download = client.get(f"/runs/{run_id}/log.txt")
    assert download.status_code == 200 and download.get_data(as_text=True).count("x" * 99) == 30
    assert client.get(f"/api/tunix/runs/{run_id}/logs?after=-1").status_code == 422


def test_stored_output_is_capped(client, app):
    app.config.update(TRAIN_COMMAND=fake_trainer_command("--stdout-bytes", "200000"), LOG_MAX_BYTES=5000)
    run_id = submit(client, "sync")["run_id"]
    run = db.session.get(TunixRun, uuid.UUID(run_id))
    assert run.log_bytes <= 5000 + 200
    full = client.get(f"/runs/{run_id}/log.txt").get_data(as_text=True)
    assert "output beyond TUNIX_LOG_MAX_BYTES (5000 bytes) is not stored here" in full


def test_workers_register_and_pending_runs_explain_themselves(client, worker_env, start_worker):
    run_id = submit(client)["run_id"]
    assert "No worker is running" in client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    worker = start_worker(worker_env(fake_trainer_command()))
    wait_for(lambda: run_status(client, run_id) == "completed")
    listed = client.get("/api/workers").get_json()["workers"]
    assert len(listed) == 1 and listed[0]["pid"] == worker.pid and listed[0]["alive"]
    assert listed[0]["runs_done"] in (0, 1)  # reported at the next heartbeat
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    listed = client.get("/api/workers").get_json()["workers"]
    assert listed[0]["state"] == "stopped" and not listed[0]["alive"]
    assert str(worker.pid) in client.get("/workers").get_data(as_text=True)
    db.session.execute(text("UPDATE workers SET state = 'idle', last_seen_at = now() - interval '5 minutes'"))
    db.session.commit()
    waiting = submit(client)["run_id"]
    page = client.get(f"/runs/{waiting}").get_data(as_text=True)
    assert re.search(r"No worker has been seen for 30\d s\.", page)  # five minutes, give or take a second


def test_queue_gauges(client):
    submit(client)
    cancelled = submit(client)["run_id"]
    client.post(f"/api/tunix/runs/{cancelled}/cancel")
    text_ = client.get("/metrics").get_data(as_text=True)
    assert 'tunix_queue_depth{status="pending"} 1.0' in text_
    assert 'tunix_runs{mode="async",status="cancelled"} 1.0' in text_ and "tunix_workers_alive 0.0" in text_
    assert "tunix_runs_recovered_total 0.0" in text_
    age = float(next(l for l in text_.splitlines() if l.startswith("tunix_queue_oldest_pending_age_seconds ")).split()[1])
    assert age >= 0
