"""Evaluation: a run's scores as columns (the leaderboard's index), its predictions, config defaults.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SCORE_COLUMNS = ("final_loss", "final_eval_loss", "answer_match", "exact_match")


def upgrade():
    op.add_column("tunix_runs", sa.Column("evaluated_on", sa.String(length=80), nullable=True))
    for name in SCORE_COLUMNS:
        op.add_column("tunix_runs", sa.Column(name, sa.Float(), nullable=True))
    op.create_index(
        "ix_tunix_runs_leaderboard", "tunix_runs",
        ["evaluated_on", sa.text("answer_match DESC NULLS LAST"), sa.text("exact_match DESC NULLS LAST"),
         sa.text("final_eval_loss ASC NULLS LAST"), "id"],
        postgresql_where=sa.text("status = 'completed' AND answer_match IS NOT NULL"))
    op.create_table(
        "run_predictions",
        sa.Column("run_id", UUID(as_uuid=True), sa.ForeignKey("tunix_runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("phase", sa.String(length=8), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("prediction", sa.Text(), nullable=False),
        sa.Column("exact_match", sa.Boolean(), nullable=False),
        sa.Column("answer_match", sa.Boolean(), nullable=False),
        sa.Column("generated_tokens", sa.Integer(), nullable=False),
        sa.CheckConstraint("phase IN ('before', 'after')", name="ck_run_predictions_phase"),
    )
    # Runs queued before this version get the new fields' defaults, so the trainer finds them.
    op.execute("UPDATE tunix_runs SET config = jsonb_build_object('eval_max_examples', 200, "
               "'eval_max_new_tokens', 64) || config WHERE NOT config ? 'eval_max_examples'")
    for name in ("final_loss", "final_eval_loss"):
        op.execute(f"UPDATE tunix_runs SET {name} = (result->>'{name}')::float WHERE mode <> 'dry_run' "
                   f"AND jsonb_typeof(result) = 'object' AND jsonb_typeof(result->'{name}') = 'number'")


def downgrade():
    op.drop_table("run_predictions")
    op.drop_index("ix_tunix_runs_leaderboard", table_name="tunix_runs")
    for name in ("evaluated_on", *SCORE_COLUMNS):
        op.drop_column("tunix_runs", name)
