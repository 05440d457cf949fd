"""idempotency keys: one row per (tenant, key), the request's hash and its answer

Revision ID: 6b8e2f3d4c51
Revises: 5a7d1e2c3b40
Create Date: 2026-11-30 10:00:00

"""
from alembic import op
import sqlalchemy as sa

import app.database


# revision identifiers, used by Alembic.
revision = '6b8e2f3d4c51'
down_revision = '5a7d1e2c3b40'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'idempotency_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tenant', sa.String(length=100), nullable=False),
        sa.Column('key', sa.String(length=255), nullable=False),
        sa.Column('request_hash', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('owner', sa.String(length=32), nullable=False),
        sa.Column('created_at', app.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column('response_status', sa.Integer(), nullable=True),
        sa.Column('response_body', sa.Text(), nullable=True),
        sa.Column('response_headers', sa.Text(), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'done')", name='ck_idempotency_keys_state'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('tenant', 'key', name='uq_idempotency_keys_tenant_key'),
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False
        )


def downgrade():
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))

    op.drop_table('idempotency_keys')
