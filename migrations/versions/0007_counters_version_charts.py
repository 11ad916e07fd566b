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
CREATE FUNCTION tunix_bump_counter(counter text, delta bigint) RETURNS void LANGUAGE sql AS $$
    INSERT INTO run_counters (name, shard, n) VALUES (counter, pg_backend_pid() % {SHARDS}, delta)
    ON CONFLICT (name, shard) DO UPDATE SET n = run_counters.n + EXCLUDED.n
$$;

CREATE FUNCTION tunix_count_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM tunix_bump_counter('runs:' || NEW.status || ':' || NEW.mode, 1);
        IF NEW.recoveries <> 0 THEN PERFORM tunix_bump_counter('recoveries', NEW.recoveries); END IF;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM tunix_bump_counter('runs:' || OLD.status || ':' || OLD.mode, -1);
        IF OLD.recoveries <> 0 THEN PERFORM tunix_bump_counter('recoveries', -OLD.recoveries); END IF;
    ELSE
        IF NEW.status IS DISTINCT FROM OLD.status OR NEW.mode IS DISTINCT FROM OLD.mode THEN
            PERFORM tunix_bump_counter('runs:' || OLD.status || ':' || OLD.mode, -1);
            PERFORM tunix_bump_counter('runs:' || NEW.status || ':' || NEW.mode, 1);
        END IF;
        IF NEW.recoveries IS DISTINCT FROM OLD.recoveries THEN
            PERFORM tunix_bump_counter('recoveries', NEW.recoveries - OLD.recoveries);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tunix_runs_counted AFTER INSERT OR DELETE OR UPDATE OF status, mode, recoveries ON tunix_runs
    FOR EACH ROW EXECUTE FUNCTION tunix_count_runs();
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
    op.execute("INSERT INTO run_counters (name, shard, n) "
               "SELECT 'runs:' || status || ':' || mode, 0, count(*) FROM tunix_runs GROUP BY status, mode")
    op.execute("INSERT INTO run_counters (name, shard, n) SELECT 'recoveries', 0, coalesce(sum(recoveries), 0) "
               "FROM tunix_runs")


def downgrade():
    op.execute("DROP TRIGGER tunix_runs_counted ON tunix_runs")
    op.execute("DROP FUNCTION tunix_count_runs()")
    op.execute("DROP FUNCTION tunix_bump_counter(text, bigint)")
    op.drop_table("run_charts")
    op.drop_table("run_counters")
    op.drop_column("tunix_runs", "version")
