"""connectors.lease_takeovers: leases taken over from a holder that let them run out

Revision ID: c3e5a7b9d124
Revises: b2d4f6a8c013
Create Date: 2026-11-29 17:58:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3e5a7b9d124'
down_revision = 'b2d4f6a8c013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('lease_takeovers', sa.BigInteger(), server_default='0', nullable=False)
        )


def downgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.drop_column('lease_takeovers')
