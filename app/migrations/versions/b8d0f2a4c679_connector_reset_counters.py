"""connectors.resets_failed, resets_abandoned, replayed_records: reset totals kept as counters

/metrics showed resets by status, and the records they replayed, by aggregating every
reset ever made at each scrape (a million resets: a second of a scrape's time). Each
connector now counts its resets that failed or were abandoned, and the snapshot records
its resets replayed, as it already counted those completed; existing rows are filled in
from the resets they have.

Revision ID: b8d0f2a4c679
Revises: a7c9e1f3b568
Create Date: 2026-12-07 12:00:00

"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "b8d0f2a4c679"
down_revision = "a7c9e1f3b568"
branch_labels = None
depends_on = None

COUNTERS = ("resets_failed", "resets_abandoned", "replayed_records")


def upgrade():
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("resets_failed", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("resets_abandoned", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("replayed_records", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE connectors SET"
        " resets_failed = (SELECT count(*) FROM resets r"
        " WHERE r.connector_id = connectors.id AND r.status = 'failed'),"
        " resets_abandoned = (SELECT count(*) FROM resets r"
        " WHERE r.connector_id = connectors.id AND r.status = 'abandoned'),"
        " replayed_records = (SELECT coalesce(sum(r.replayed_records), 0) FROM resets r"
        " WHERE r.connector_id = connectors.id)"
    )


def downgrade():
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        for column in reversed(COUNTERS):
            batch_op.drop_column(column)
