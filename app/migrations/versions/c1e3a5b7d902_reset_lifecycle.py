"""The reset lifecycle: cancelled resets, each reset's phases, its replay rate

- resets.prior_sync_state: the connector's sync state when the reset started, so a
  cancelled reset gives it back as it was;
- resets.phases: each phase's name, started_at and ended_at (JSON);
- resets.rate_at / rate_records: the replay's progress a few seconds ago, for its
  rate and its estimated time left;
- connectors.resets_cancelled: its cancelled resets (what /metrics sums).

Revision ID: c1e3a5b7d902
Revises: b8d0f2a4c679
Create Date: 2026-12-07 12:00:00

"""
import sqlalchemy as sa
from alembic import op

from app.database import UTCDateTime

# revision identifiers, used by Alembic.
revision = "c1e3a5b7d902"
down_revision = "b8d0f2a4c679"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("resets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prior_sync_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("phases", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("rate_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("rate_records", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("resets_cancelled", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade():
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.drop_column("resets_cancelled")
    with op.batch_alter_table("resets", schema=None) as batch_op:
        batch_op.drop_column("rate_records")
        batch_op.drop_column("rate_at")
        batch_op.drop_column("phases")
        batch_op.drop_column("prior_sync_state")
