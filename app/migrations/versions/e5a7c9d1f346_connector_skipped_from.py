"""connectors.skipped_from: where a skip started, until a table sink records the skip

Revision ID: e5a7c9d1f346
Revises: d4f6b8c0e235
Create Date: 2026-11-29 19:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e5a7c9d1f346'
down_revision = 'd4f6b8c0e235'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('skipped_from', sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.drop_column('skipped_from')
