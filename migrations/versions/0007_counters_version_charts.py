"""The hot path: run counts kept by a trigger (O(1) to read), a version per run for conditional
requests, and each run's chart series kept downsampled as its points arrive.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SHARDS = 16  # concurrent writers spread over this many rows per counter

COUNT_FUNCTIONS = f"""
CREATE FUNCTION tunix_bump_counters(deltas jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO run_counters (name, shard, n)
    SELECT key, pg_backend_pid() % {SHARDS}, value::bigint FROM jsonb_each_text(deltas) WHERE value::bigint <> 0
    ON CONFLICT (name, shard) DO UPDATE SET n = run_counters.n + EXCLUDED.n
$$;

-- One upsert per counter per statement (not per row): a bulk insert of a million runs costs a few
-- upserts, and a counter row is not rewritten a million times inside one transaction.
CREATE FUNCTION tunix_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tunix_bump_counters((SELECT jsonb_object_agg(name, n) FROM (
        SELECT 'runs:' || status || ':' || mode AS name, count(*) AS n FROM new_rows GROUP BY status, mode
        UNION ALL SELECT 'recoveries', coalesce(sum(recoveries), 0) FROM new_rows) counted));
    RETURN NULL;
END
$$;

CREATE FUNCTION tunix_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tunix_bump_counters((SELECT jsonb_object_agg(name, -n) FROM (
        SELECT 'runs:' || status || ':' || mode AS name, count(*) AS n FROM old_rows GROUP BY status, mode
        UNION ALL SELECT 'recoveries', coalesce(sum(recoveries), 0) FROM old_rows) counted));
    RETURN NULL;
END
$$;

CREATE TRIGGER tunix_runs_counted_insert AFTER INSERT ON tunix_runs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tunix_count_inserted();
CREATE TRIGGER tunix_runs_counted_delete AFTER DELETE ON tunix_runs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tunix_count_deleted();
"""

# Kept apart: migration 0008 replaces it with a row trigger, and its downgrade puts this back.
UPDATE_COUNTER = """
CREATE FUNCTION tunix_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tunix_bump_counters((SELECT jsonb_object_agg(name, n) FROM (
        SELECT name, sum(n) AS n FROM (
            SELECT 'runs:' || o.status || ':' || o.mode AS name, -1 AS n FROM old_rows o JOIN new_rows n USING (id)
                WHERE o.status <> n.status OR o.mode <> n.mode
            UNION ALL
            SELECT 'runs:' || n.status || ':' || n.mode, 1 FROM old_rows o JOIN new_rows n USING (id)
                WHERE o.status <> n.status OR o.mode <> n.mode
            UNION ALL
            SELECT 'recoveries', n.recoveries - o.recoveries FROM old_rows o JOIN new_rows n USING (id)
                WHERE n.recoveries <> o.recoveries) changes
        GROUP BY name) counted));
    RETURN NULL;
END
$$;
CREATE TRIGGER tunix_runs_counted_update AFTER UPDATE ON tunix_runs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tunix_count_updated();
"""


def upgrade():
    op.add_column("tunix_runs", sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "run_counters",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("shard", sa.SmallInteger(), primary_key=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "run_charts",
        sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("tunix_runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("series", JSONB(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute(COUNT_FUNCTIONS)
    op.execute(UPDATE_COUNTER)
    op.execute("INSERT INTO run_counters (name, shard, n) "
               "SELECT 'runs:' || status || ':' || mode, 0, count(*) FROM tunix_runs GROUP BY status, mode")
    op.execute("INSERT INTO run_counters (name, shard, n) SELECT 'recoveries', 0, coalesce(sum(recoveries), 0) "
               "FROM tunix_runs")


def downgrade():
    for event, function in (("insert", "inserted"), ("delete", "deleted"), ("update", "updated")):
        op.execute(f"DROP TRIGGER tunix_runs_counted_{event} ON tunix_runs")
        op.execute(f"DROP FUNCTION tunix_count_{function}()")
    op.execute("DROP FUNCTION tunix_bump_counters(jsonb)")
    op.drop_table("run_charts")
    op.drop_table("run_counters")
    op.drop_column("tunix_runs", "version")
