"""Every migration upgrades and downgrades cleanly on a real Postgres."""
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
