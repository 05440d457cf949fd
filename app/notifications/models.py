"""Notification endpoints, and the outbox that feeds them: events and their deliveries.

Two tables hold the outbox. An *event* (``notification_events``) is written
once, whatever the number of endpoints it goes to: its ``id`` is the
``event_id`` receivers deduplicate on. A *delivery*
(``notification_deliveries``) is one event owed to one endpoint: its state,
its attempts, when it is next tried and what went wrong last.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime, utcnow
from app.extensions import db
from app.pipelines.models import NAME_MAX

URL_MAX = 2048


class EventType:
    """The events an endpoint can subscribe to, and the test event."""

    RESET_COMPLETED = "reset.completed"
    RESET_FAILED = "reset.failed"
    RESET_CANCELLED = "reset.cancelled"
    CONNECTOR_FAILED = "connector.failed"
    CONNECTOR_OUT_OF_SYNC = "connector.out_of_sync"
    # Sent by POST /v0/notifications/{id}/test to that endpoint alone; not subscribable.
    TEST = "notification.test"
    SUBSCRIBABLE = (
        RESET_COMPLETED,
        RESET_FAILED,
        RESET_CANCELLED,
        CONNECTOR_FAILED,
        CONNECTOR_OUT_OF_SYNC,
    )
    ALL = (*SUBSCRIBABLE, TEST)


class DeliveryState:
    """Where a delivery stands."""

    # Not acknowledged yet: tried again at next_attempt_at.
    PENDING = "pending"
    # A 2xx answer came.
    DELIVERED = "delivered"
    # Not acknowledged within NOTIFICATION_RETRY_HOURS of the event: given up, kept visible.
    DEAD = "dead"
    ALL = (PENDING, DELIVERED, DEAD)


class NotificationEndpoint(db.Model):
    """A URL of one tenant that the events it subscribes to are POSTed to, signed.

    The signing secret is stored as it is (the service computes HMACs with
    it), unlike an API key, of which only a hash is kept; it is shown once,
    when the endpoint is created.
    """

    __tablename__ = "notification_endpoints"
    __table_args__ = (sa.Index("ix_notification_endpoints_tenant_id", "tenant", "id"),)

    # Row ids order the tenant's list (its cursor); the API names endpoints by uid.
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    uid: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    name: Mapped[str | None] = mapped_column(sa.String(NAME_MAX))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    url: Mapped[str] = mapped_column(sa.String(URL_MAX))
    # The event types it subscribes to (EventType.SUBSCRIBABLE), a JSON list.
    events: Mapped[list[str]] = mapped_column(sa.JSON)
    secret: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Counted as deliveries end (pending ones are counted from the due index), so a
    # GET costs the same however many deliveries the endpoint ever had.
    delivered_count: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    dead_count: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # The last failed attempt to this endpoint, whichever delivery it was.
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_error_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class NotificationEvent(db.Model):
    """Something that happened to a tenant, as its endpoints are told: written once."""

    __tablename__ = "notification_events"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    type: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class NotificationDelivery(db.Model):
    """One event owed to one endpoint.

    ``next_attempt_at`` is the due index's key: while pending, when it is next
    tried; while a sender holds it, when that sender's claim runs out (a
    sender that died leaves it due then); NULL once delivered or dead, so
    the partial indexes hold only the deliveries still owed.

    ``endpoint_id`` has no foreign key on purpose: removing an endpoint deletes
    its deliveries, and an event emitted at that very moment may still write
    one, which the sender then drops. A foreign key would make that emit fail,
    and with it the caller's transaction (a reset's completion).
    """

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'dead')",
            name="ck_notification_deliveries_state",
        ),
        # What is due, oldest first: next_due() reads its first entry.
        sa.Index(
            "ix_notification_deliveries_due",
            "next_attempt_at",
            sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
            postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
        ),
        # The same by tenant, so that tenants are served in turn.
        sa.Index(
            "ix_notification_deliveries_tenant_due",
            "tenant",
            "next_attempt_at",
            sqlite_where=sa.text("next_attempt_at IS NOT NULL"),
            postgresql_where=sa.text("next_attempt_at IS NOT NULL"),
        ),
        # An endpoint's deliveries, newest first, and its counts by state.
        sa.Index("ix_notification_deliveries_endpoint", "endpoint_id", "id"),
        sa.Index("ix_notification_deliveries_endpoint_state", "endpoint_id", "state"),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("notification_events.id", ondelete="CASCADE"), index=True
    )
    endpoint_id: Mapped[int] = mapped_column(sa.Integer)
    tenant: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    state: Mapped[str] = mapped_column(sa.String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Who holds it now (a random token per claim): only that sender's outcome is written.
    claim: Mapped[str | None] = mapped_column(sa.String(32))
    # Database clock; the retry window runs from here.
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
