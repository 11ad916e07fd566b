"""Change notifications: what a web process caches (app.change_feed) is told when it goes stale.

A run whose version or status changes names itself on tunix_rt_run_changed (with " queue" when it
enters or leaves the queue); an insert of pending runs says "queue" once per statement. A changed or
deleted user names itself on tunix_rt_user_changed; any write to workers says so on
tunix_rt_worker_changed, once per statement. Postgres sends them when the transaction commits.

Revision ID: 0008
Revises: 0007
"""
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FUNCTIONS = """
CREATE FUNCTION tunix_notify_run_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_ record := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    queue_moved boolean := OLD.status = 'pending' OR row_.status = 'pending';
BEGIN
    PERFORM pg_notify('tunix_rt_run_changed', row_.id::text || CASE WHEN queue_moved THEN ' queue' ELSE '' END);
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

CREATE FUNCTION tunix_notify_workers_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tunix_rt_worker_changed', '');
    RETURN NULL;
END
$$;

-- A heartbeat or a lease renewal changes neither version nor status: no notification.
CREATE TRIGGER tunix_runs_notify_update AFTER UPDATE ON tunix_runs FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION tunix_notify_run_changed();
CREATE TRIGGER tunix_runs_notify_delete AFTER DELETE ON tunix_runs FOR EACH ROW
    EXECUTE FUNCTION tunix_notify_run_changed();
CREATE TRIGGER tunix_runs_notify_insert AFTER INSERT ON tunix_runs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tunix_notify_runs_queued();
CREATE TRIGGER users_notify_change AFTER UPDATE OR DELETE ON users FOR EACH ROW
    EXECUTE FUNCTION tunix_notify_user_changed();
CREATE TRIGGER workers_notify_change AFTER INSERT OR UPDATE OR DELETE ON workers FOR EACH STATEMENT
    EXECUTE FUNCTION tunix_notify_workers_changed();
"""

TRIGGERS = {"tunix_runs": ("tunix_runs_notify_update", "tunix_runs_notify_delete", "tunix_runs_notify_insert"),
            "users": ("users_notify_change",), "workers": ("workers_notify_change",)}


def upgrade():
    op.execute(FUNCTIONS)


def downgrade():
    for table, names in TRIGGERS.items():
        for name in names:
            op.execute(f"DROP TRIGGER {name} ON {table}")
    for function in ("run_changed", "runs_queued", "user_changed", "workers_changed"):
        op.execute(f"DROP FUNCTION tunix_notify_{function}()")
