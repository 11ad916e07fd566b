"""Sessions that can be ended: a generation per user that every page session must carry, and a flag
that deactivates a user (their sessions and tokens stop working at once).

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    # Constant defaults: Postgres adds both without rewriting the table.
    op.add_column("users", sa.Column("session_generation", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("users", sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade():
    op.drop_column("users", "active")
    op.drop_column("users", "session_generation")
