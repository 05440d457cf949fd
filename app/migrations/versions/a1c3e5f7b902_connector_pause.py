"""connectors.paused: an operator pauses and starts one connector

Revision ID: a1c3e5f7b902
Revises: 9f2b6c8d0e31
Create Date: 2026-11-29 17:20:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "a1c3e5f7b902"
down_revision = "9f2b6c8d0e31"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade():
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.drop_column("paused")
