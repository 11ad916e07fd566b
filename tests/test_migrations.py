"""Every migration upgrades and downgrades cleanly on a real Postgres."""
from pathlib import Path

import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from tools.scratch_postgres import execute_autocommit, url_for_database


def test_upgrade_downgrade_upgrade(postgres_admin_url, app_config):
    from app import create_app
    from app.extensions import db

    name = "tunix_rt_migration_check"
    execute_autocommit(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    execute_autocommit(postgres_admin_url, f'CREATE DATABASE "{name}"')
    try:
        app = create_app({**app_config, "DATABASE_URL": url_for_database(postgres_admin_url, name)})
        with app.app_context():
            upgrade()
            tables = set(inspect(db.engine).get_table_names())
            assert {"tunix_runs", "datasets", "dataset_examples", "run_metrics", "alembic_version"} <= tables
            indexes = {i["name"] for i in inspect(db.engine).get_indexes("tunix_runs")}
            assert "ix_tunix_runs_pending_queue" in indexes
            # The migrations build exactly the schema the models describe (indexes included).
            from alembic.autogenerate import compare_metadata
            from alembic.migration import MigrationContext

            with db.engine.connect() as connection:
                drift = compare_metadata(MigrationContext.configure(connection), db.metadata)
            assert drift == [], drift
            downgrade(revision="base")
            assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
            upgrade()
            db.engine.dispose()
    finally:
        execute_autocommit(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _snapshot(db, columns: dict[str, list[str]] | None = None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Every table's columns, and its rows as text over those columns (sorted)."""
    from sqlalchemy import text

    if columns is None:
        columns = {}
        for table, column in db.session.execute(text(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name <> 'alembic_version' ORDER BY table_name, ordinal_position")):
            columns.setdefault(table, []).append(column)
    rows = {table: sorted(db.session.execute(text(
        f"SELECT ({', '.join(f'{chr(34)}{c}{chr(34)}' for c in cols)})::text FROM \"{table}\"")).scalars())
        for table, cols in columns.items()}
    return columns, rows


def _users_start_at_generation_0_and_active(db, text) -> None:
    users = db.session.execute(text("SELECT session_generation, active FROM users")).all()
    assert users and all(row == (0, True) for row in users)


def _workers_have_no_devices_until_they_register_again(db, text) -> None:
    workers = db.session.execute(text("SELECT devices FROM workers")).all()
    assert workers and all(row == (None,) for row in workers)


def _every_run_asked_for_one_device_and_no_worker_has_versions(db, text) -> None:
    runs = db.session.execute(text("SELECT devices, device_ids FROM tunix_runs")).all()
    assert runs and all(row == (1, None) for row in runs)
    workers = db.session.execute(text("SELECT versions FROM workers")).all()
    assert workers and all(row == (None,) for row in workers)


def _every_run_records_the_artifacts_root_it_was_stored_under(db, text) -> None:
    from flask import current_app

    runs = db.session.execute(text("SELECT artifacts_url FROM tunix_runs")).scalars().all()
    root = str(Path(current_app.config["ARTIFACTS_ROOT"]).resolve())
    assert runs and set(runs) == {root}


def _no_run_names_a_registered_version(db, text) -> None:
    runs = db.session.execute(text("SELECT model_version_id, model_digest FROM tunix_runs")).all()
    assert runs and all(row == (None, None) for row in runs)
    assert db.session.execute(text("SELECT count(*) FROM model_versions")).scalar() == 0


def _workers_share_the_playground_and_nothing_was_asked(db, text) -> None:
    workers = db.session.execute(text("SELECT playground FROM workers")).all()
    assert workers and all(row == ("share",) for row in workers)
    assert db.session.execute(text("SELECT count(*) FROM generation_requests")).scalar() == 0


@pytest.mark.parametrize("previous, check", [("0008", _users_start_at_generation_0_and_active),
                                             ("0009", _workers_have_no_devices_until_they_register_again),
                                             ("0010", _every_run_asked_for_one_device_and_no_worker_has_versions),
                                             ("0011", _every_run_records_the_artifacts_root_it_was_stored_under),
                                             ("0012", _no_run_names_a_registered_version),
                                             ("0013", _workers_share_the_playground_and_nothing_was_asked)])
def test_each_migration_keeps_every_row_the_release_before_wrote(previous, check, postgres_admin_url, app_config):
    """Rows of every kind, written by the app, taken back to the schema of the release before (`previous`);
    then the migrations since applied in place: nothing is lost or changed, and the new columns start as
    the release meant them to."""
    from sqlalchemy import text

    from app import create_app
    from app.datasets.sample import ensure_sample_dataset
    from app.extensions import db
    from app.sweeps import service as sweep_service
    from tests.helpers import SAMPLE, fake_trainer_command, make_user, sign_in

    name = f"tunix_rt_migration_rows_{previous}"  # its own: Optuna keeps a pool per database URL
    execute_autocommit(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    execute_autocommit(postgres_admin_url, f'CREATE DATABASE "{name}"')
    try:
        app = create_app({**app_config, "DATABASE_URL": url_for_database(postgres_admin_url, name),
                          "TRAIN_COMMAND": fake_trainer_command("--artifacts", "--evaluate")})
        with app.app_context():
            upgrade()
            ensure_sample_dataset()
            client = sign_in(app.test_client(), make_user("member"))
            make_user("boss", admin=True)
            done = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE, "name": "done", "tags": ["a"]})
            # The registry (0013): a version, an alias and its move, a gate, a candidate and its verdict, a run
            # trained from the version.
            client.post("/api/models/qa/versions", json={"run_id": done.get_json()["run_id"], "alias": "staging"})
            client.post("/api/models/qa/gates", json={"metric": "answer_match", "eval_dataset_key": SAMPLE,
                                                      "floor": 0.1})
            client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE, "candidate_for": "qa",
                                                          "model_id": "models:/qa@staging", "seed": 3})
            client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE})
            # The playground (0014): a request waiting, one cancelled.
            client.post("/api/generate", json={"model": "models:/qa@staging", "prompts": ["2 + 2?"]})
            asked = client.post("/api/generate", json={"model": "tiny", "prompts": ["hi"]}).get_json()["id"]
            client.post(f"/api/generate/{asked}/cancel")
            client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}, headers={"Idempotency-Key": "k"})
            cancelled = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
            client.post(f"/api/tunix/runs/{cancelled}/cancel")
            client.post("/api/datasets", json={"name": "mine", "examples": [{"prompt": "p", "response": "r"}] * 3})
            sweep = client.post("/api/sweeps", json={
                "name": "s", "base": {"dataset_key": SAMPLE, "max_steps": 4},
                "space": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
                "objective": {"metric": "final_loss"}, "max_trials": 3, "parallelism": 1}).get_json()
            db.session.execute(text("UPDATE tunix_runs SET status = 'completed', final_loss = 1.5 "
                                    "WHERE sweep_id = :id"), {"id": sweep["sweep_id"]})
            db.session.commit()
            sweep_service.advance_running()
            app.test_client().post("/login", data={"username": "member", "password": "not it at all"})
            from app.queue import registry

            registry.register("host:1:ab", "host", 1, [{"kind": "cpu", "name": "CPU", "memory_bytes": 2**30}])
            counts = {t: db.session.execute(text(f'SELECT count(*) FROM "{t}"')).scalar()
                      for t in ("users", "api_tokens", "tunix_runs", "datasets", "dataset_examples", "run_metrics",
                                "run_log_chunks", "run_predictions", "run_charts", "run_counters", "sweeps",
                                "sweep_trials", "workers", "sign_in_failures", "registered_models", "model_versions",
                                "model_aliases", "alias_moves", "model_gates", "gate_verdicts",
                                "generation_requests")}
            assert all(counts.values()), counts  # every kind of row is there
            db.session.remove()

            downgrade(revision=previous)
            columns, before = _snapshot(db)
            db.session.remove()
            upgrade()
            _, after = _snapshot(db, columns)
            assert after == before
            check(db, text)
            db.session.remove()
            db.engine.dispose()
    finally:
        execute_autocommit(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
