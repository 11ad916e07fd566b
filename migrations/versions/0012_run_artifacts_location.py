"""Where each run's files are stored: the artifact store's URL (or local folder) when it was submitted.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op
from flask import current_app, has_app_context

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("tunix_runs", sa.Column("artifacts_url", sa.Text(), nullable=True))
    # Every run stored before kept its files under the artifacts root this deployment is configured with:
    # record it, so a later change of TUNIX_ARTIFACTS_URL leaves their pages as they are.
    if has_app_context():
        from app.artifacts.store import location_of

        op.execute(sa.text("UPDATE tunix_runs SET artifacts_url = :url").bindparams(
            url=location_of(current_app.config)))


def downgrade():
    op.drop_column("tunix_runs", "artifacts_url")
