"""The playground: generation requests, claimed by workers like runs, kept as each model's history; which
workers answer them.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("workers", sa.Column("playground", sa.String(8), nullable=False, server_default="share"))
    op.create_table(
        "generation_requests",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("group_id", postgresql.UUID(as_uuid=True)),
        sa.Column("position", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("model_key", sa.String(600), nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("tunix_runs.id", ondelete="SET NULL")),
        sa.Column("model_version_id", sa.Integer(), sa.ForeignKey("model_versions.id", ondelete="SET NULL")),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column("prompts", postgresql.JSONB(), nullable=False),
        sa.Column("settings", postgresql.JSONB(), nullable=False),
        sa.Column("answers", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("phase", sa.String(16)),
        sa.Column("cold", sa.Boolean()),
        sa.Column("load_seconds", sa.Float()),
        sa.Column("worker_id", sa.String(255)),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="2"),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True)),
        sa.Column("error_message", sa.Text()),
        sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
                           name="ck_generation_requests_status"),
    )
    op.create_index("ix_generation_requests_pending", "generation_requests", ["created_at", "id"],
                    postgresql_where=sa.text("status = 'pending'"))
    op.create_index("ix_generation_requests_leased", "generation_requests", ["heartbeat_at"],
                    postgresql_where=sa.text("status = 'running'"))
    op.create_index("ix_generation_requests_model", "generation_requests", ["model_key", "created_at"])
    op.create_index("ix_generation_requests_group", "generation_requests", ["group_id", "position"],
                    postgresql_where=sa.text("group_id IS NOT NULL"))
    op.create_index("ix_generation_requests_waiting_user", "generation_requests", ["created_by"],
                    postgresql_where=sa.text("status = 'pending'"))


def downgrade():
    op.drop_table("generation_requests")
    op.drop_column("workers", "playground")
