"""Leases, cancel, retry, live logs and the worker registry.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_STATUSES = "('pending', 'running', 'completed', 'failed', 'timeout', 'cancelled')"
NEW_STATUSES = "('pending', 'running', 'cancelling', 'completed', 'failed', 'timeout', 'cancelled')"


def upgrade():
    op.drop_constraint("ck_tunix_runs_status", "tunix_runs", type_="check")
    op.create_check_constraint("ck_tunix_runs_status", "tunix_runs", f"status IN {NEW_STATUSES}")
    op.add_column("tunix_runs", sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("tunix_runs", sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("tunix_runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("tunix_runs", sa.Column("recoveries", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("tunix_runs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("tunix_runs", sa.Column("retry_of", sa.UUID(), nullable=True))
    op.add_column("tunix_runs", sa.Column("log_bytes", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_foreign_key("fk_tunix_runs_retry_of", "tunix_runs", "tunix_runs", ["retry_of"], ["id"],
                          ondelete="SET NULL")
    # Runs that were already running get a heartbeat now, so the sweeper judges them fairly.
    op.execute("UPDATE tunix_runs SET heartbeat_at = now(), attempt = 1 WHERE status = 'running'")
    op.create_index("ix_tunix_runs_leased_heartbeat", "tunix_runs", ["heartbeat_at"],
                    postgresql_where=sa.text("status IN ('running', 'cancelling')"))
    op.create_index("ix_tunix_runs_retry_of", "tunix_runs", ["retry_of"],
                    postgresql_where=sa.text("retry_of IS NOT NULL"))
    op.create_table(
        "run_log_chunks",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(length=8), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["tunix_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "seq"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("current_run_id", postgresql.UUID(), nullable=True),
        sa.Column("runs_done", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_workers_last_seen", "workers", ["last_seen_at"])


def downgrade():
    op.drop_index("ix_workers_last_seen", table_name="workers")
    op.drop_table("workers")
    op.drop_table("run_log_chunks")
    op.drop_index("ix_tunix_runs_retry_of", table_name="tunix_runs",
                  postgresql_where=sa.text("retry_of IS NOT NULL"))
    op.drop_index("ix_tunix_runs_leased_heartbeat", table_name="tunix_runs",
                  postgresql_where=sa.text("status IN ('running', 'cancelling')"))
    op.drop_constraint("fk_tunix_runs_retry_of", "tunix_runs", type_="foreignkey")
    for column in ("log_bytes", "retry_of", "cancel_requested_at", "recoveries", "heartbeat_at", "max_attempts",
                   "attempt"):
        op.drop_column("tunix_runs", column)
    # Runs caught mid-cancel have no older name; they were on their way to cancelled.
    op.execute("UPDATE tunix_runs SET status = 'cancelled' WHERE status = 'cancelling'")
    op.drop_constraint("ck_tunix_runs_status", "tunix_runs", type_="check")
    op.create_check_constraint("ck_tunix_runs_status", "tunix_runs", f"status IN {OLD_STATUSES}")
