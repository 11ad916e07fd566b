"""Sweeps: a search asks Optuna for configs and the queue runs them; Optuna's own tables live in
the "optuna" schema, apart from ours (its storage would read our alembic_version as its own).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE SCHEMA IF NOT EXISTS optuna")
    op.create_table(
        "sweeps",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base", JSONB(), nullable=False),
        sa.Column("space", JSONB(), nullable=False),
        sa.Column("objective_metric", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("max_trials", sa.Integer(), nullable=False),
        sa.Column("parallelism", sa.Integer(), nullable=False),
        sa.Column("sampler", sa.String(length=16), nullable=False),
        sa.Column("pruner", sa.String(length=16), nullable=False),
        sa.Column("trials_asked", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("best_trial_number", sa.Integer(), nullable=True),
        sa.Column("best_value", sa.Float(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('running', 'completed', 'cancelled', 'failed')", name="ck_sweeps_status"),
    )
    op.create_index("ix_sweeps_created", "sweeps", ["created_at", "id"])
    op.create_index("ix_sweeps_running", "sweeps", ["id"], postgresql_where=sa.text("status = 'running'"))
    op.add_column("tunix_runs", sa.Column("sweep_id", UUID(as_uuid=True), nullable=True))
    op.add_column("tunix_runs", sa.Column("trial_number", sa.Integer(), nullable=True))
    op.create_foreign_key("tunix_runs_sweep_id_fkey", "tunix_runs", "sweeps", ["sweep_id"], ["id"],
                          ondelete="SET NULL")
    op.create_index("ix_tunix_runs_sweep", "tunix_runs", ["sweep_id", "trial_number"],
                    postgresql_where=sa.text("sweep_id IS NOT NULL"))
    op.create_table(
        "sweep_trials",
        sa.Column("sweep_id", UUID(as_uuid=True), sa.ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("number", sa.Integer(), primary_key=True),
        sa.Column("study_trial_id", sa.Integer(), nullable=False),
        sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("tunix_runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("params", JSONB(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("pruned_at_step", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("asked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("told_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('running', 'complete', 'pruned', 'failed')", name="ck_sweep_trials_state"),
    )
    op.create_index("ix_sweep_trials_run", "sweep_trials", ["run_id"], unique=True)


def downgrade():
    op.drop_index("ix_sweep_trials_run", table_name="sweep_trials")
    op.drop_table("sweep_trials")
    op.drop_index("ix_tunix_runs_sweep", table_name="tunix_runs")
    op.drop_constraint("tunix_runs_sweep_id_fkey", "tunix_runs", type_="foreignkey")
    op.drop_column("tunix_runs", "trial_number")
    op.drop_column("tunix_runs", "sweep_id")
    op.drop_index("ix_sweeps_running", table_name="sweeps")
    op.drop_index("ix_sweeps_created", table_name="sweeps")
    op.drop_table("sweeps")
    op.execute("DROP SCHEMA IF EXISTS optuna CASCADE")
