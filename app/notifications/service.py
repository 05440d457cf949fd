"""Notification endpoint work: registering, listing and removing endpoints, and the outbox.

:func:`emit` is the door other packages use: it writes an event, and one
pending delivery per endpoint of the tenant that subscribes to its type, in
the caller's transaction, so that the event exists exactly when the state
change it tells of was committed. :mod:`app.notifications.delivery` sends
what is due.

An endpoint's signing secret is stored as it is: the service computes an
HMAC with it for every event it sends. It is shown once, in the answer that
creates the endpoint (an API key, which the service only ever compares, is
stored as a hash instead).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app.database import db_time, notify_work, utcnow
from app.delivery import wake
from app.errors import QuotaExceeded, UnknownNotificationEndpoint
from app.extensions import db
from app.notifications.models import (
    DeliveryState,
    EventType,
    NotificationDelivery,
    NotificationEndpoint,
    NotificationEvent,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# 32 random bytes: 256 bits, 43 characters once URL-safe base64 encoded.
SECRET_BYTES = 32


def generate_secret() -> str:
    """Return a new random signing secret."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


# -- endpoints -----------------------------------------------------------------------------------


def _check_quota(tenant: str) -> None:
    """Raise ``QuotaExceeded`` if the tenant may not register one more endpoint."""
    limit = current_app.config.get("TENANT_MAX_NOTIFICATION_ENDPOINTS")
    if not limit:
        return
    held = db.session.execute(
        sa.select(sa.func.count()).where(NotificationEndpoint.tenant == tenant)
    ).scalar_one()
    if held >= int(limit):
        raise QuotaExceeded(
            f"The tenant has {held} notification endpoints, its quota "
            "(TENANT_MAX_NOTIFICATION_ENDPOINTS); remove some, or ask an operator to raise it",
            details={"quota": "notification_endpoints", "limit": int(limit), "current": held},
        )


def create_endpoint(
    tenant: str,
    url: str,
    events: list[str],
    name: str | None = None,
    description: str = "",
) -> tuple[NotificationEndpoint, str]:
    """Register an endpoint; return it with its secret, which is never shown again.

    ``url`` and ``events`` were validated by :class:`~app.notifications.schemas.NotificationCreate`.
    """
    _check_quota(tenant)
    secret = generate_secret()
    endpoint = NotificationEndpoint(
        tenant=tenant,
        name=name,
        description=description,
        url=url,
        events=list(events),
        secret=secret,
    )
    db.session.add(endpoint)
    db.session.commit()
    return endpoint, secret


def list_endpoints(
    tenant: str, limit: int | None = None, after: uuid.UUID | None = None
) -> list[NotificationEndpoint]:
    """Return the tenant's endpoints, oldest first: at most ``limit``, those after ``after``.

    An ``after`` that is not one of the tenant's endpoints gives an empty list.
    """
    query = sa.select(NotificationEndpoint).where(NotificationEndpoint.tenant == tenant)
    if after is not None:
        mark = (
            sa.select(NotificationEndpoint.id)
            .where(NotificationEndpoint.uid == after, NotificationEndpoint.tenant == tenant)
            .scalar_subquery()
        )
        query = query.where(NotificationEndpoint.id > mark)
    query = query.order_by(NotificationEndpoint.id).limit(limit)
    return list(db.session.execute(query).scalars())


def _as_uid(notification_id: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(notification_id, uuid.UUID):
        return notification_id
    try:
        return uuid.UUID(notification_id)
    except (ValueError, TypeError, AttributeError):
        return None


def get_endpoint(tenant: str, notification_id: str | uuid.UUID) -> NotificationEndpoint:
    """Return the tenant's endpoint of that id or raise ``UnknownNotificationEndpoint``.

    Another tenant's endpoint is unknown too: its existence is not told.
    """
    uid = _as_uid(notification_id)
    endpoint = None
    if uid is not None:  # anything else names no endpoint, and is never sent to the database
        endpoint = db.session.execute(
            sa.select(NotificationEndpoint).where(
                NotificationEndpoint.uid == uid, NotificationEndpoint.tenant == tenant
            )
        ).scalar_one_or_none()
    if endpoint is None:
        raise UnknownNotificationEndpoint(str(notification_id))
    return endpoint


def remove_endpoint(tenant: str, notification_id: str | uuid.UUID) -> None:
    """Remove an endpoint with its deliveries (and the events no other endpoint is owed)."""
    endpoint = get_endpoint(tenant, notification_id)
    owed = sa.select(NotificationDelivery.event_id).where(
        NotificationDelivery.endpoint_id == endpoint.id
    )
    others = (
        sa.select(NotificationDelivery.id)
        .where(
            NotificationDelivery.event_id == NotificationEvent.id,
            NotificationDelivery.endpoint_id != endpoint.id,
        )
        .exists()
    )
    db.session.execute(
        sa.delete(NotificationEvent)
        .where(NotificationEvent.id.in_(owed), ~others)
        .execution_options(synchronize_session=False)
    )
    db.session.execute(
        sa.delete(NotificationDelivery)
        .where(NotificationDelivery.endpoint_id == endpoint.id)
        .execution_options(synchronize_session=False)
    )
    db.session.delete(endpoint)
    db.session.commit()


def delivery_counts(endpoint: NotificationEndpoint) -> dict[str, int]:
    """How the endpoint's deliveries stand: delivered and dead ever, pending now."""
    pending = db.session.execute(
        sa.select(sa.func.count()).where(
            NotificationDelivery.endpoint_id == endpoint.id,
            NotificationDelivery.state == DeliveryState.PENDING,
        )
    ).scalar_one()
    return {
        "delivered": endpoint.delivered_count,
        "pending": pending,
        "dead": endpoint.dead_count,
    }


def _delivery_columns() -> tuple[Any, ...]:
    """What a delivery shows (:class:`~app.notifications.schemas.DeliveryOut`)."""
    d = NotificationDelivery
    return (
        d.event_id,
        NotificationEvent.type,
        d.state,
        d.attempts,
        d.last_error,
        d.created_at,
        d.last_attempt_at,
        d.next_attempt_at,
        d.delivered_at,
    )


def list_deliveries(
    endpoint: NotificationEndpoint, limit: int | None = None, after: uuid.UUID | None = None
) -> list[sa.Row]:
    """Return the endpoint's deliveries, newest first: at most ``limit``, older than ``after``.

    ``after`` is the event id of the previous page's last delivery; one the
    endpoint was never owed gives an empty list.
    """
    d = NotificationDelivery
    query = (
        sa.select(*_delivery_columns())
        .join(NotificationEvent, NotificationEvent.id == d.event_id)
        .where(d.endpoint_id == endpoint.id)
    )
    if after is not None:
        mark = (
            sa.select(d.id)
            .where(d.endpoint_id == endpoint.id, d.event_id == after)
            .scalar_subquery()
        )
        query = query.where(d.id < mark)
    return list(db.session.execute(query.order_by(d.id.desc()).limit(limit)).all())


def send_test(tenant: str, notification_id: str | uuid.UUID) -> sa.Row:
    """Queue a ``notification.test`` event to that endpoint alone; return its delivery."""
    endpoint = get_endpoint(tenant, notification_id)
    payload = {
        "message": "A test event, sent on request: this endpoint receives pipeline-manager "
        "notifications.",
        "notification_id": str(endpoint.uid),
    }
    event_id = _queue(tenant, EventType.TEST, payload, [endpoint.id])
    db.session.commit()
    return db.session.execute(
        sa.select(*_delivery_columns())
        .join(NotificationEvent, NotificationEvent.id == NotificationDelivery.event_id)
        .where(NotificationDelivery.event_id == event_id)
    ).one()


# -- the outbox ----------------------------------------------------------------------------------


def emit(tenant: str, event_type: str, payload: dict) -> None:
    """Write an event for the tenant's endpoints that subscribe to it, in the caller's transaction.

    One event row and one pending delivery per subscribed endpoint, written
    in the session's current transaction and never committed here: the caller
    commits them with the state change they tell of, or rolls both back. No
    endpoint subscribed: nothing is written. ``event_type`` is one of
    ``EventType.SUBSCRIBABLE`` (``ValueError`` otherwise); ``payload`` becomes
    the event's ``data``; datetimes and UUIDs in it are written as ISO 8601
    and as text. The workers are woken at commit.
    """
    if event_type not in EventType.SUBSCRIBABLE:
        raise ValueError(f"unknown notification event type {event_type!r}")
    rows = db.session.execute(
        sa.select(NotificationEndpoint.id, NotificationEndpoint.events).where(
            NotificationEndpoint.tenant == tenant
        )
    ).all()
    targets = [endpoint_id for endpoint_id, events in rows if event_type in (events or ())]
    if targets:
        _queue(tenant, event_type, payload, targets)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _queue(tenant: str, event_type: str, payload: dict, endpoint_ids: list[int]) -> uuid.UUID:
    """Write an event and a pending delivery to each endpoint, due now; return the event id."""
    data = json.loads(json.dumps(payload, default=_jsonable))
    event_id = uuid.uuid4()
    db.session.execute(
        sa.insert(NotificationEvent).values(
            id=event_id, tenant=tenant, type=event_type, payload=data, created_at=utcnow()
        )
    )
    now = db_time()
    db.session.execute(
        sa.insert(NotificationDelivery).values(
            [
                {
                    "event_id": event_id,
                    "endpoint_id": endpoint_id,
                    "tenant": tenant,
                    "state": DeliveryState.PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for endpoint_id in endpoint_ids
            ]
        )
    )
    # The worker of this process at once, those of the others at commit.
    notify_work()
    wake.ring_after_commit()
    return event_id
