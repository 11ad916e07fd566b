"""`flask --app wsgi init-db`, run as a deployment runs it: migrations, then the sample dataset, idempotently."""
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.helpers import ROOT
from tools.scratch_postgres import execute_autocommit, url_for_database


@pytest.fixture
def empty_database(postgres_admin_url):
    name = f"tunix_rt_cli_{uuid.uuid4().hex[:8]}"
    execute_autocommit(postgres_admin_url, f'CREATE DATABASE "{name}"')
    yield url_for_database(postgres_admin_url, name)
    execute_autocommit(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _init_db(url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["DATABASE_URL"] = url
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "init-db"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_init_db_migrates_and_seeds_once(empty_database):
    first = _init_db(empty_database)
    assert first.returncode == 0, first.stderr
    assert "database ready; sample dataset arithmetic-v1 created" in first.stdout
    engine = create_engine(empty_database)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"tunix_runs", "datasets", "dataset_examples", "run_metrics", "run_log_chunks", "workers",
                "alembic_version"} <= tables
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT num_examples FROM datasets WHERE key = 'arithmetic-v1'")) == 240

        second = _init_db(empty_database)
        assert second.returncode == 0, second.stderr
        assert "database ready; sample dataset arithmetic-v1 present" in second.stdout
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM datasets")) == 1
    finally:
        engine.dispose()
