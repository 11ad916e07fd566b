"""What each worker trains on: its devices and their memory, which a dry run's plan sets beside what a
step needs.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable, no default: Postgres adds it without rewriting the table; a worker fills it when it registers.
    op.add_column("workers", sa.Column("devices", postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade():
    op.drop_column("workers", "devices")
