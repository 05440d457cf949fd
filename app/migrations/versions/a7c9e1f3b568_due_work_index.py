"""The due index: connectors.tenant, due_at and wakes; view_logs.compact_due_at; worker_processes

Work is found by an index of what is due, not by scanning every connector
(app.delivery.due). Existing rows are marked from what they hold: a connector
of a running pipeline with changes to deliver, a reset or a snapshot owed is
due now (when its lease runs out, if one is held); a change log with rows past
its compacted start is due for compaction.

Revision ID: a7c9e1f3b568
Revises: f6b8d0e2a457
Create Date: 2026-12-07 10:00:00

"""
import datetime as dt

import sqlalchemy as sa
from alembic import op

from app.database import UTCDateTime

# revision identifiers, used by Alembic.
revision = "a7c9e1f3b568"
down_revision = "f6b8d0e2a457"
branch_labels = None
depends_on = None

DUE = sa.text("due_at IS NOT NULL")
COMPACT_DUE = sa.text("compact_due_at IS NOT NULL")


def upgrade():
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("due_at", UTCDateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("wakes", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.execute(
        "UPDATE connectors SET tenant = (SELECT p.tenant FROM views v"
        " JOIN pipelines p ON p.id = v.pipeline_id WHERE v.id = connectors.view_id)"
    )
    now = sa.bindparam("now", dt.datetime.now(dt.UTC), type_=UTCDateTime())
    op.get_bind().execute(
        sa.text(
            "UPDATE connectors SET due_at = CASE WHEN lease_owner IS NOT NULL"
            " THEN lease_expires_at ELSE :now END"
            " WHERE view_id IN (SELECT v.id FROM views v JOIN pipelines p"
            " ON p.id = v.pipeline_id WHERE p.status = 'running')"
            " AND (sync_state = 'resetting'"
            " OR EXISTS (SELECT 1 FROM resets r WHERE r.connector_id = connectors.id"
            " AND r.status = 'inprogress')"
            " OR (sync_state = 'in_sync' AND delivered_seq < (SELECT l.last_seq"
            " FROM view_logs l WHERE l.view_id = connectors.view_id)))"
        ).bindparams(now)
    )
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.alter_column("tenant", existing_type=sa.String(length=100), nullable=False)
        batch_op.create_index("ix_connectors_tenant", ["tenant"], unique=False)
        batch_op.create_index(
            "ix_connectors_due",
            ["tenant", "due_at"],
            unique=False,
            sqlite_where=DUE,
            postgresql_where=DUE,
        )

    with op.batch_alter_table("view_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compact_due_at", UTCDateTime(), nullable=True))
    op.get_bind().execute(
        sa.text(
            "UPDATE view_logs SET compact_due_at = :now WHERE last_seq > compacted_seq"
        ).bindparams(now)
    )
    with op.batch_alter_table("view_logs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_view_logs_compact_due",
            ["compact_due_at"],
            unique=False,
            sqlite_where=COMPACT_DUE,
            postgresql_where=COMPACT_DUE,
        )

    op.create_table(
        "worker_processes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("worker_processes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_worker_processes_heartbeat_at", ["heartbeat_at"], unique=False
        )


def downgrade():
    with op.batch_alter_table("worker_processes", schema=None) as batch_op:
        batch_op.drop_index("ix_worker_processes_heartbeat_at")
    op.drop_table("worker_processes")
    with op.batch_alter_table("view_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_view_logs_compact_due", sqlite_where=COMPACT_DUE)
        batch_op.drop_column("compact_due_at")
    with op.batch_alter_table("connectors", schema=None) as batch_op:
        batch_op.drop_index("ix_connectors_due", sqlite_where=DUE)
        batch_op.drop_index("ix_connectors_tenant")
        batch_op.drop_column("wakes")
        batch_op.drop_column("due_at")
        batch_op.drop_column("tenant")
