"""Fixtures: a real Postgres (the machine's server, else the embedded one), a fresh database per
session with the real migrations applied, clean tables per test, and real worker processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.contract import ContractClient
from tests.helpers import (CHROMIUM, CHROMIUM_FLAGS, FAKE_TRAINER, ROOT, Credentials, fake_trainer_command, make_user,
                           sign_in, sign_in_browser)
from tools.scratch_postgres import execute_autocommit, server_admin_url, url_for_database

# Settings read at import time by the app: keep them out of the developer's instance/.
_INSTANCE = Path(tempfile.mkdtemp(prefix="tunix-rt-test-"))
os.environ["TUNIX_INSTANCE_DIR"] = str(_INSTANCE)
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


@pytest.fixture(scope="session", autouse=True)
def jax_stays_out_of_the_test_process():
    """The suite forks trainers and workers; beside JAX's threads a fork can deadlock. Tests that need JAX
    run it in a process of their own (tests/family_checks.py)."""
    yield
    assert "jax" not in sys.modules, "a test imported JAX into the test process"


@pytest.fixture(scope="session")
def postgres_admin_url():
    url, server = server_admin_url(_INSTANCE / "pgdata")
    yield url
    if server is not None:
        server.cleanup()


@pytest.fixture(scope="session")
def database_url(postgres_admin_url):
    """A fresh database for this test session, migrated to head with the real migrations."""
    name = f"tunix_rt_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    execute_autocommit(postgres_admin_url, f'CREATE DATABASE "{name}"')
    url = url_for_database(postgres_admin_url, name)
    from flask_migrate import upgrade

    from app import create_app

    app = create_app({"DATABASE_URL": url})
    with app.app_context():
        upgrade()
        from app.extensions import db

        db.engine.dispose()
    yield url
    execute_autocommit(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def artifacts_root(tmp_path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


class S3Server:
    """moto's S3 server on a loopback port of this process: a real S3 protocol peer (as s3fs tests itself),
    which a test may stop and start again on the same port; its buckets outlive a restart."""

    BUCKET = "tunix-rt-test"

    def __init__(self):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.start()
        self.client().create_bucket(Bucket=self.BUCKET)

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_store(s3_server, app_config, monkeypatch):
    """This test's prefix of the bucket as the artifact store: of the app under test, and of the workers
    started with `worker_env(**s3_store.env)`."""
    from types import SimpleNamespace

    prefix = f"runs-{uuid.uuid4().hex[:8]}"
    url = f"s3://{S3Server.BUCKET}/{prefix}"
    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    app_config.update(ARTIFACTS_URL=url, S3_ENDPOINT_URL=s3_server.endpoint)
    return SimpleNamespace(url=url, prefix=prefix, bucket=S3Server.BUCKET, server=s3_server,
                           env={"TUNIX_ARTIFACTS_URL": url, "TUNIX_S3_ENDPOINT_URL": s3_server.endpoint, **credentials})


@pytest.fixture
def scratch_root(tmp_path) -> Path:
    """Where workers (and sync runs) train: one folder per execution, named after the run."""
    return tmp_path / "scratch"


@pytest.fixture
def app_config(database_url, artifacts_root, scratch_root) -> dict:
    """Settings of the app under test; tests adjust them before `app` is built."""
    return {
        "DATABASE_URL": database_url, "ARTIFACTS_ROOT": str(artifacts_root), "SCRATCH_DIR": str(scratch_root),
        "TRAIN_COMMAND": fake_trainer_command(), "RUN_TIMEOUT_SECONDS": 60.0, "KILL_GRACE_SECONDS": 1.0,
        "WTF_CSRF_ENABLED": False, "METRICS_CACHE_SECONDS": 0.0, "TESTING": True,
    }


@pytest.fixture
def app(app_config):
    from app import create_app
    from app.extensions import db
    from app.datasets.sample import ensure_sample_dataset

    app = create_app(app_config)
    app.test_client_class = ContractClient  # every /api answer a test gets is held to the OpenAPI document
    with app.app_context():
        db.session.execute(text("TRUNCATE run_log_chunks, run_metrics, sweep_trials, tunix_runs, sweeps, run_counters, "
                                "dataset_examples, datasets, workers, api_tokens, sign_in_failures, users CASCADE"))
        db.session.commit()
        ensure_sample_dataset()
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def credentials(app) -> Credentials:
    """The test user (a member, not an admin) and its API token."""
    return make_user("tester")


@pytest.fixture
def client(app, credentials):
    """A test client signed in as the test user: a session for pages, the bearer token for the API."""
    return sign_in(app.test_client(), credentials)


@pytest.fixture
def worker_env(database_url, artifacts_root, scratch_root):
    """Environment for a real `worker.py` process pointed at the test database."""
    def build(train_command: list[str] | None = None, **extra: str) -> dict[str, str]:
        import shlex

        env = dict(os.environ)
        env.update({
            "DATABASE_URL": database_url, "TUNIX_ARTIFACTS_ROOT": str(artifacts_root),
            "TUNIX_SCRATCH_DIR": str(scratch_root),
            "TUNIX_TRAIN_COMMAND": shlex.join(train_command or fake_trainer_command()),
            "TUNIX_WORKER_POLL_SECONDS": "0.2", "TUNIX_KILL_GRACE_SECONDS": "1",
        })
        if str(FAKE_TRAINER) in (train_command or fake_trainer_command()):
            env["TUNIX_DEVICE_PROBE_COMMAND"] = ""  # the stand-in needs no JAX: the worker counts the host's devices
        env.update(extra)
        return env
    return build


@pytest.fixture
def start_worker():
    """Start real `python worker.py` processes; any still alive at the end are stopped by pid."""
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "worker.py", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()



@pytest.fixture
def live_server(app):
    """The test app served on a loopback port, in a thread, for the browser."""
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def browser():
    """Debian's chromium, driven by Playwright (never a browser of Playwright's own)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server, credentials):
    """A browser page signed in as the test user. It lets the test's own scripts past the app's
    Content-Security-Policy (Playwright evaluates them with eval); one test checks the policy itself."""
    page = browser.new_page(bypass_csp=True)
    sign_in_browser(page, live_server, credentials)
    return page
