"""connectors.last_delivered_at: when each connector last delivered a batch

Revision ID: b2d4f6a8c013
Revises: a1c3e5f7b902
Create Date: 2026-11-29 17:30:00

"""
from alembic import op
import sqlalchemy as sa

import app.database


# revision identifiers, used by Alembic.
revision = 'b2d4f6a8c013'
down_revision = 'a1c3e5f7b902'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_delivered_at", app.database.UTCDateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table('connectors', schema=None) as batch_op:
        batch_op.drop_column('last_delivered_at')
