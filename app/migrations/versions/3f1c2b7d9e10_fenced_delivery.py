"""fenced delivery: sync state, lease epochs, in-flight ranges, one file per connector

Revision ID: 3f1c2b7d9e10
Revises: 99a9c1da2479
Create Date: 2026-11-29 13:40:00

"""
import uuid

from alembic import op
import sqlalchemy as sa

import app.database


# revision identifiers, used by Alembic.
revision = '3f1c2b7d9e10'
down_revision = '99a9c1da2479'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('uid', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('sink_key', sa.String(length=1024), nullable=True))
        batch_op.add_column(sa.Column('sync_state', sa.String(length=16), server_default='in_sync', nullable=False))
        batch_op.add_column(sa.Column('sync_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('inflight_first_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('inflight_last_seq', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('lease_epoch', sa.BigInteger(), server_default='0', nullable=False))

    # Existing connectors get their never-reused id now.
    connectors = sa.table('connectors', sa.column('id', sa.Integer), sa.column('uid', sa.Uuid))
    bind = op.get_bind()
    for (connector_id,) in bind.execute(sa.select(connectors.c.id)).all():
        bind.execute(
            connectors.update().where(connectors.c.id == connector_id).values(uid=uuid.uuid4())
        )

    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.alter_column('uid', existing_type=sa.Uuid(), nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_connectors_uid'), ['uid'])
        batch_op.create_unique_constraint(batch_op.f('uq_connectors_sink_key'), ['sink_key'])
        batch_op.create_index(batch_op.f('ix_connectors_sync_state'), ['sync_state'], unique=False)
        batch_op.create_check_constraint(
            'ck_connectors_sync_state', "sync_state IN ('in_sync', 'resetting', 'failed')"
        )

    with op.batch_alter_table('resets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.String(length=16), server_default='request', nullable=False))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('next_attempt_at', app.database.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('epoch', sa.BigInteger(), nullable=True))
        batch_op.drop_column('lease_expires_at')


def downgrade():
    with op.batch_alter_table('resets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_expires_at', app.database.UTCDateTime(timezone=True), nullable=True))
        batch_op.drop_column('epoch')
        batch_op.drop_column('next_attempt_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('origin')

    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.drop_constraint('ck_connectors_sync_state', type_='check')
        batch_op.drop_index(batch_op.f('ix_connectors_sync_state'))
        batch_op.drop_constraint(batch_op.f('uq_connectors_sink_key'), type_='unique')
        batch_op.drop_constraint(batch_op.f('uq_connectors_uid'), type_='unique')
        batch_op.drop_column('lease_epoch')
        batch_op.drop_column('inflight_last_seq')
        batch_op.drop_column('inflight_first_seq')
        batch_op.drop_column('sync_reason')
        batch_op.drop_column('sync_state')
        batch_op.drop_column('sink_key')
        batch_op.drop_column('uid')
