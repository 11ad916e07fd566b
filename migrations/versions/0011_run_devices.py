"""Runs that ask for several devices, and the devices a worker placed each on; the versions a worker runs.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    # A constant default: Postgres adds the column without rewriting the table, and every run stored
    # before asked, in effect, for one device.
    op.add_column("tunix_runs", sa.Column("devices", sa.Integer(), nullable=False, server_default="1"))
    op.add_column("tunix_runs", sa.Column("device_ids", postgresql.ARRAY(sa.Integer()), nullable=True))
    op.create_check_constraint("ck_tunix_runs_devices", "tunix_runs", "devices >= 1")
    op.add_column("workers", sa.Column("versions", postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade():
    op.drop_column("workers", "versions")
    op.drop_constraint("ck_tunix_runs_devices", "tunix_runs", type_="check")
    op.drop_column("tunix_runs", "device_ids")
    op.drop_column("tunix_runs", "devices")
