"""Initial schema: datasets and their examples, runs, run metric series.

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 03:40:46.676403

"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('datasets',
    sa.Column('key', sa.String(length=80), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('num_examples', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('stats', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key'),
    sa.UniqueConstraint('name', 'version', name='uq_datasets_name_version')
    )
    op.create_table('dataset_examples',
    sa.Column('dataset_key', sa.String(length=80), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_key'], ['datasets.key'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset_key', 'position')
    )
    op.create_table('tunix_runs',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('dataset_key', sa.String(length=80), nullable=False),
    sa.Column('model_id', sa.String(length=512), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('stdout_tail', sa.Text(), nullable=True),
    sa.Column('stderr_tail', sa.Text(), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('worker_id', sa.String(length=255), nullable=True),
    sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('progress', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.CheckConstraint("mode IN ('sync', 'async', 'dry_run')", name='ck_tunix_runs_mode'),
    sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed', 'timeout', 'cancelled')", name='ck_tunix_runs_status'),
    sa.ForeignKeyConstraint(['dataset_key'], ['datasets.key'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    with op.batch_alter_table('tunix_runs', schema=None) as batch_op:
        batch_op.create_index('ix_tunix_runs_created', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_tunix_runs_dataset_created', ['dataset_key', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_tunix_runs_mode_created', ['mode', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_tunix_runs_pending_queue', ['queued_at', 'id'], unique=False, postgresql_where=sa.text("status = 'pending'"))
        batch_op.create_index('ix_tunix_runs_status_created', ['status', 'created_at', 'id'], unique=False)

    op.create_table('run_metrics',
    sa.Column('run_id', sa.UUID(), nullable=False),
    sa.Column('split', sa.String(length=8), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('loss', sa.Float(), nullable=False),
    sa.Column('learning_rate', sa.Float(), nullable=True),
    sa.Column('tokens_per_second', sa.Float(), nullable=True),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("split IN ('train', 'eval')", name='ck_run_metrics_split'),
    sa.ForeignKeyConstraint(['run_id'], ['tunix_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'split', 'step')
    )


def downgrade():
    op.drop_table('run_metrics')
    with op.batch_alter_table('tunix_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_tunix_runs_status_created')
        batch_op.drop_index('ix_tunix_runs_pending_queue', postgresql_where=sa.text("status = 'pending'"))
        batch_op.drop_index('ix_tunix_runs_mode_created')
        batch_op.drop_index('ix_tunix_runs_dataset_created')
        batch_op.drop_index('ix_tunix_runs_created')

    op.drop_table('tunix_runs')
    op.drop_table('dataset_examples')
    op.drop_table('datasets')
