"""view_logs.records: the Z-set's size, kept by every batch, so a snapshot needs no count pass

Revision ID: 9f2b6c8d0e31
Revises: 8e1a5b7c9d20
Create Date: 2026-11-29 17:10:00

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "9f2b6c8d0e31"
down_revision = "8e1a5b7c9d20"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("view_logs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("records", sa.BigInteger(), server_default="0", nullable=False)
        )
    # Count what each view holds now (a record of weight n counts n times).
    logs = sa.table("view_logs", sa.column("view_id"), sa.column("records"))
    records = sa.table("view_records", sa.column("view_id"), sa.column("weight"))
    total = (
        sa.select(sa.func.coalesce(sa.func.sum(records.c.weight), 0))
        .where(records.c.view_id == logs.c.view_id)
        .scalar_subquery()
    )
    op.execute(logs.update().values(records=total))


def downgrade():
    with op.batch_alter_table("view_logs", schema=None) as batch_op:
        batch_op.drop_column("records")
