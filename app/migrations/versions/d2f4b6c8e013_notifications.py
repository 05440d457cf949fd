"""Notification endpoints and their outbox: notification_endpoints, _events, _deliveries

- notification_endpoints: a tenant's URLs, the events each subscribes to, the
  signing secret (stored: the service signs with it), delivery counters and
  the last error;
- notification_events: each event once (its id is the event_id receivers dedupe on);
- notification_deliveries: an event owed to an endpoint; partial indexes on
  next_attempt_at (alone, and by tenant) hold only the deliveries still owed.

Revision ID: d2f4b6c8e013
Revises: c1e3a5b7d902
Create Date: 2026-12-08 12:00:00

"""
import sqlalchemy as sa
from alembic import op

from app.database import UTCDateTime

# revision identifiers, used by Alembic.
revision = "d2f4b6c8e013"
down_revision = "c1e3a5b7d902"
branch_labels = None
depends_on = None

OWED = sa.text("next_attempt_at IS NOT NULL")


def upgrade():
    op.create_table(
        "notification_endpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("dead_count", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uid"),
    )
    op.create_index(
        "ix_notification_endpoints_tenant_id", "notification_endpoints", ["tenant", "id"]
    )
    op.create_table(
        "notification_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("claim", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'dead')",
            name="ck_notification_deliveries_state",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["notification_events.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_notification_deliveries_event_id", "notification_deliveries", ["event_id"]
    )
    op.create_index(
        "ix_notification_deliveries_endpoint", "notification_deliveries", ["endpoint_id", "id"]
    )
    op.create_index(
        "ix_notification_deliveries_endpoint_state",
        "notification_deliveries",
        ["endpoint_id", "state"],
    )
    op.create_index(
        "ix_notification_deliveries_due",
        "notification_deliveries",
        ["next_attempt_at"],
        sqlite_where=OWED,
        postgresql_where=OWED,
    )
    op.create_index(
        "ix_notification_deliveries_tenant_due",
        "notification_deliveries",
        ["tenant", "next_attempt_at"],
        sqlite_where=OWED,
        postgresql_where=OWED,
    )


def downgrade():
    op.drop_table("notification_deliveries")
    op.drop_table("notification_events")
    op.drop_index("ix_notification_endpoints_tenant_id", table_name="notification_endpoints")
    op.drop_table("notification_endpoints")
