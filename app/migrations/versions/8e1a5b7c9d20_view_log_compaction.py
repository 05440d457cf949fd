"""view log compaction: view_logs.compacted_seq, where each view's change log now starts

Revision ID: 8e1a5b7c9d20
Revises: 7c9f3a4e5d62
Create Date: 2026-11-30 12:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '8e1a5b7c9d20'
down_revision = '7c9f3a4e5d62'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('view_logs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('compacted_seq', sa.BigInteger(), server_default='0', nullable=False)
        )


def downgrade():
    with op.batch_alter_table('view_logs', schema=None) as batch_op:
        batch_op.drop_column('compacted_seq')
