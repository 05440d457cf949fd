"""connectors.sink_version: a table sink's commit id after the last batch or reset

Revision ID: d4f6b8c0e235
Revises: c3e5a7b9d124
Create Date: 2026-11-29 19:10:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd4f6b8c0e235'
down_revision = 'c3e5a7b9d124'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sink_version', sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.drop_column('sink_version')
