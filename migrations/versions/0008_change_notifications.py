"""Change notifications: what a web process caches (app.change_feed) is told when it goes stale; and
the run counters of a status change kept by a row trigger, not a statement trigger.

A run whose version or status changes names itself on tunix_rt_run_changed (with " queue" when it
enters or leaves the queue); an insert of pending runs says "queue" once per statement. A changed or
deleted user names itself on tunix_rt_user_changed, an API token (by its hash) on
tunix_rt_token_changed; any write to workers says so on
tunix_rt_worker_changed, once per statement. Postgres sends them when the transaction commits.

Runs change status one at a time (a claim, a finish), and every update of tunix_runs (heartbeats
and progress included) paid for the statement trigger's transition tables: a claim and its finish
spent more time in that trigger than in the updates. Now one row trigger, fired only when what it
counts or notifies changed, does both. Inserts and deletes, which come in bulk, keep their
statement triggers.

Revision ID: 0008
Revises: 0007
"""
from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SHARDS = 16  # as in 0007

FUNCTIONS = f"""
DROP TRIGGER tunix_runs_counted_update ON tunix_runs;
DROP FUNCTION tunix_count_updated();

CREATE FUNCTION tunix_run_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard int := pg_backend_pid() % {SHARDS};
BEGIN
    IF OLD.status IS DISTINCT FROM NEW.status OR OLD.mode IS DISTINCT FROM NEW.mode THEN
        INSERT INTO run_counters (name, shard, n)
        VALUES ('runs:' || OLD.status || ':' || OLD.mode, my_shard, -1),
               ('runs:' || NEW.status || ':' || NEW.mode, my_shard, 1)
        ON CONFLICT (name, shard) DO UPDATE SET n = run_counters.n + EXCLUDED.n;
    END IF;
    IF OLD.recoveries IS DISTINCT FROM NEW.recoveries THEN
        INSERT INTO run_counters (name, shard, n) VALUES ('recoveries', my_shard, NEW.recoveries - OLD.recoveries)
        ON CONFLICT (name, shard) DO UPDATE SET n = run_counters.n + EXCLUDED.n;
    END IF;
    IF OLD.version IS DISTINCT FROM NEW.version OR OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('tunix_rt_run_changed', NEW.id::text
                          || CASE WHEN 'pending' IN (OLD.status, NEW.status) THEN ' queue' ELSE '' END);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tunix_notify_run_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tunix_rt_run_changed', OLD.id::text || CASE WHEN OLD.status = 'pending' THEN ' queue' ELSE '' END);
    RETURN NULL;
END
$$;

CREATE FUNCTION tunix_notify_runs_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status = 'pending') THEN
        PERFORM pg_notify('tunix_rt_run_changed', 'queue');
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tunix_notify_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tunix_rt_user_changed', OLD.id::text);
    RETURN NULL;
END
$$;

CREATE FUNCTION tunix_notify_token_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tunix_rt_token_changed', OLD.token_hash);
    RETURN NULL;
END
$$;

CREATE FUNCTION tunix_notify_workers_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tunix_rt_worker_changed', '');
    RETURN NULL;
END
$$;

-- A heartbeat or a lease renewal changes none of these: the trigger is not even called.
CREATE TRIGGER tunix_runs_updated AFTER UPDATE ON tunix_runs FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version OR OLD.status IS DISTINCT FROM NEW.status
          OR OLD.mode IS DISTINCT FROM NEW.mode OR OLD.recoveries IS DISTINCT FROM NEW.recoveries)
    EXECUTE FUNCTION tunix_run_updated();
CREATE TRIGGER tunix_runs_notify_delete AFTER DELETE ON tunix_runs FOR EACH ROW
    EXECUTE FUNCTION tunix_notify_run_deleted();
CREATE TRIGGER tunix_runs_notify_insert AFTER INSERT ON tunix_runs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tunix_notify_runs_queued();
CREATE TRIGGER users_notify_change AFTER UPDATE OR DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION tunix_notify_user_changed();
CREATE TRIGGER api_tokens_notify_change AFTER UPDATE OR DELETE ON api_tokens FOR EACH ROW
    EXECUTE FUNCTION tunix_notify_token_changed();
CREATE TRIGGER workers_notify_change AFTER INSERT OR UPDATE OR DELETE ON workers FOR EACH STATEMENT
    EXECUTE FUNCTION tunix_notify_workers_changed();
"""

TRIGGERS = {"tunix_runs": ("tunix_runs_updated", "tunix_runs_notify_delete", "tunix_runs_notify_insert"),
            "users": ("users_notify_change",), "api_tokens": ("api_tokens_notify_change",),
            "workers": ("workers_notify_change",)}


def upgrade():
    op.execute(FUNCTIONS)


def downgrade():
    for table, names in TRIGGERS.items():
        for name in names:
            op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute("DROP FUNCTION tunix_run_updated()")
    for function in ("run_deleted", "runs_queued", "user_changed", "token_changed", "workers_changed"):
        op.execute(f"DROP FUNCTION tunix_notify_{function}()")
    # 0007's statement trigger for updates, as that migration wrote it.
    op.execute(context.script.get_revision("0007").module.UPDATE_COUNTER)
