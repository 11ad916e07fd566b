"""Runs get an optional name and tags.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tunix_runs", sa.Column("name", sa.String(length=120), nullable=True))
    op.add_column("tunix_runs", sa.Column("tags", postgresql.ARRAY(sa.String(length=32)), nullable=False,
                                          server_default="{}"))
    # The list's tag filter: tags @> ARRAY['x'].
    op.create_index("ix_tunix_runs_tags", "tunix_runs", ["tags"], postgresql_using="gin")


def downgrade():
    op.drop_index("ix_tunix_runs_tags", table_name="tunix_runs", postgresql_using="gin")
    op.drop_column("tunix_runs", "tags")
    op.drop_column("tunix_runs", "name")
