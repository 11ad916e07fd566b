"""The model registry: registered models, immutable versions, aliases and their history, gates and verdicts;
the registry version a run's base model resolved to.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None



def upgrade():
    op.create_table(
        "registered_models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("versions_made", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("registered_models.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("files", postgresql.JSONB(), nullable=False),
        sa.Column("store_url", sa.Text(), nullable=False),
        sa.Column("source_run_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("tunix_runs.id", ondelete="SET NULL")),
        sa.Column("lineage", postgresql.JSONB(), nullable=False),
        sa.Column("scores", postgresql.JSONB(), nullable=False),
        sa.Column("facts", postgresql.JSONB(), nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("model_id", "number", name="uq_model_versions_number"),
        sa.UniqueConstraint("model_id", "digest", name="uq_model_versions_digest"),
    )
    op.create_index("ix_model_versions_source_run", "model_versions", ["source_run_id"])
    op.create_table(
        "model_aliases",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("registered_models.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer(), sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("registered_models.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_number", sa.Integer()),
        sa.Column("to_number", sa.Integer(), nullable=False),
        sa.Column("moved_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("moved_by_name", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("override", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_alias_moves_alias_time", "alias_moves", ["model_id", "alias", "moved_at", "id"])
    op.create_table(
        "model_gates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("registered_models.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("eval_dataset_key", sa.String(80), nullable=False),
        sa.Column("floor", sa.Float()),
        sa.Column("max_drop", sa.Float()),
        sa.Column("drop_kind", sa.String(8), nullable=False),
        sa.Column("baseline_alias", sa.String(64), nullable=False),
        sa.Column("confidence_z", sa.Float(), nullable=False),
        sa.Column("created_by", sa.Integer(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("direction IN ('higher', 'lower')", name="ck_model_gates_direction"),
        sa.CheckConstraint("drop_kind IN ('absolute', 'relative')", name="ck_model_gates_drop_kind"),
        sa.CheckConstraint("floor IS NOT NULL OR max_drop IS NOT NULL", name="ck_model_gates_rule"),
    )
    op.create_index("ix_model_gates_model", "model_gates", ["model_id"])
    op.create_table(
        "gate_verdicts",
        sa.Column("run_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("tunix_runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("gate_id", sa.Integer(), sa.ForeignKey("model_gates.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("candidate_value", sa.Float()),
        sa.Column("baseline_number", sa.Integer()),
        sa.Column("baseline_value", sa.Float()),
        sa.Column("delta", sa.Float()),
        sa.Column("allowance", sa.Float()),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.add_column("tunix_runs", sa.Column("model_version_id", sa.Integer(), nullable=True))
    op.add_column("tunix_runs", sa.Column("model_digest", sa.String(64), nullable=True))
    op.create_foreign_key("fk_tunix_runs_model_version", "tunix_runs", "model_versions", ["model_version_id"], ["id"])
    op.create_index("ix_tunix_runs_model_version", "tunix_runs", ["model_version_id"],
                    postgresql_where=sa.text("model_version_id IS NOT NULL"))


def downgrade():
    op.drop_index("ix_tunix_runs_model_version", table_name="tunix_runs")
    op.drop_constraint("fk_tunix_runs_model_version", "tunix_runs", type_="foreignkey")
    op.drop_column("tunix_runs", "model_digest")
    op.drop_column("tunix_runs", "model_version_id")
    for table in ("gate_verdicts", "model_gates", "alias_moves", "model_aliases", "model_versions",
                  "registered_models"):
        op.drop_table(table)
