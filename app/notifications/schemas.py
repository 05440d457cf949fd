"""Request and response shapes of notification endpoints and their deliveries."""

from __future__ import annotations

import re
from typing import Any

import marshmallow as ma
from marshmallow import validate

from app.notifications.models import URL_MAX, DeliveryState, EventType
from app.pipelines.schemas import DESCRIPTION, name_field
from app.schemas import PageQuery

# What an endpoint's URL may be: http(s), a host name or an IPv4 address, a port in
# 1-65535, then any printable ASCII. No credentials (the signature says who sent
# it; user:password@ would be shown and logged), no IPv6 literal (use a name).
# The document states the same pattern, so a URL that fits it is accepted.
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL_PATTERN = rf"^https?://[A-Za-z0-9.-]+(:{_PORT})?([/?#][!-~]*)?$"
_URL_RE = re.compile(URL_PATTERN)
URL_HELP = (
    "An http:// or https:// URL: a host name or IPv4 address, an optional port, then "
    "printable ASCII; no user name or password."
)


def _check_url(value: str) -> None:
    """Refuse a URL that does not fit ``URL_PATTERN``, saying why where it can."""
    if _URL_RE.fullmatch(value) is not None:
        return
    head = value.split("/", 3)[2] if value.count("/") >= 2 else ""
    if "@" in head:
        raise ma.ValidationError(
            "Credentials in the URL are not accepted: receivers check the signature instead."
        )
    raise ma.ValidationError(URL_HELP)


def _each_once(events: list[str]) -> None:
    """Refuse a list that names an event twice."""
    if len(set(events)) != len(events):
        raise ma.ValidationError("Name each event at most once.")


class NotificationCreate(ma.Schema):
    """Body of ``POST /v0/notifications``."""

    class Meta:
        unknown = ma.RAISE

    url = ma.fields.String(
        required=True,
        validate=[validate.Length(max=URL_MAX), _check_url],
        metadata={
            "pattern": URL_PATTERN,
            "description": URL_HELP + " Events are POSTed there, signed. Where the service "
            "may connect is checked at every connection (HTTP_SINK_ALLOWED_NETWORKS and "
            "HTTP_SINK_DENIED_NETWORKS, as for http sinks): a refused destination shows in "
            "the deliveries' last_error.",
            "example": "https://hooks.example.com/pipeline-manager",
        },
    )
    events = ma.fields.List(
        ma.fields.String(validate=validate.OneOf(EventType.SUBSCRIBABLE)),
        required=True,
        validate=[validate.Length(min=1, max=len(EventType.SUBSCRIBABLE)), _each_once],
        metadata={
            "uniqueItems": True,
            "description": "The events sent to it.",
            "example": ["reset.completed", "reset.failed"],
        },
    )
    name = name_field(
        load_default=None,
        allow_none=True,
        metadata={"description": "A label, for people (not unique).", "example": "on-call"},
    )
    description = ma.fields.String(load_default="", validate=DESCRIPTION)


class DeliveryCounts(ma.Schema):
    """How an endpoint's deliveries stand."""

    delivered = ma.fields.Integer(required=True, metadata={"description": "Ever delivered."})
    pending = ma.fields.Integer(required=True, metadata={"description": "Not delivered yet."})
    dead = ma.fields.Integer(
        required=True,
        metadata={"description": "Given up after NOTIFICATION_RETRY_HOURS (24 by default)."},
    )


def _shown_url(endpoint: Any) -> str:
    from app.transports.http import redact_url

    return redact_url(endpoint.url)


class NotificationOut(ma.Schema):
    """A notification endpoint as the API shows it: never its secret."""

    id = ma.fields.UUID(required=True, attribute="uid")
    name = ma.fields.String(required=True, allow_none=True)
    description = ma.fields.String(required=True)
    url = ma.fields.Function(
        _shown_url,
        required=True,
        metadata={
            "type": "string",
            "description": "Where events are POSTed; secret-looking query values shown as ***.",
        },
    )
    events = ma.fields.List(
        ma.fields.String(metadata={"enum": list(EventType.SUBSCRIBABLE)}), required=True
    )
    created_at = ma.fields.AwareDateTime(required=True)


class NotificationCreated(NotificationOut):
    """A new endpoint, with its signing secret: it is shown this once."""

    # Not required: a replay of the request (same Idempotency-Key) answers without it.
    secret = ma.fields.String(
        metadata={
            "description": "The key of the HMAC-SHA256 signature of every event sent to the "
            "endpoint (X-Pipeline-Manager-Signature). Shown once: absent from the replayed "
            "answer of a retry with the same Idempotency-Key. The service stores it (it "
            "signs with it), unlike an API key, of which it keeps only a hash."
        }
    )


class NotificationDetail(NotificationOut):
    """An endpoint with how its deliveries stand."""

    deliveries = ma.fields.Nested(DeliveryCounts, required=True)
    last_error = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the last failed attempt to it failed; null if none did."},
    )
    last_error_at = ma.fields.AwareDateTime(required=True, allow_none=True)


class DeliveryOut(ma.Schema):
    """One event owed to one endpoint."""

    event_id = ma.fields.UUID(
        required=True,
        metadata={"description": "The event's id: the same at every attempt; dedupe on it."},
    )
    type = ma.fields.String(required=True, metadata={"enum": list(EventType.ALL)})
    state = ma.fields.String(
        required=True,
        metadata={
            "enum": list(DeliveryState.ALL),
            "description": "pending until a 2xx answer (delivered), or until "
            "NOTIFICATION_RETRY_HOURS after the event without one (dead).",
        },
    )
    attempts = ma.fields.Integer(required=True)
    last_error = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the last failed attempt failed; null if none did."},
    )
    created_at = ma.fields.AwareDateTime(required=True)
    last_attempt_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    next_attempt_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "When it is tried next (while an attempt runs, when that attempt's "
            "claim runs out); null once delivered or dead."
        },
    )
    delivered_at = ma.fields.AwareDateTime(required=True, allow_none=True)


class NotificationListQuery(PageQuery):
    """Query of ``GET /v0/notifications``: a page of the tenant's endpoints, oldest first."""

    after = ma.fields.UUID(
        metadata={
            "description": "List the endpoints created after this one (the previous page's last)."
        }
    )


class DeliveryListQuery(PageQuery):
    """Query of ``GET /v0/notifications/{notification_id}/deliveries``: newest first."""

    after = ma.fields.UUID(
        metadata={
            "description": "List the deliveries older than the one of this event_id (the "
            "previous page's last)."
        }
    )
