"""HTTP routes of notification endpoints: an admin of a tenant manages them (guard.ROUTE_ROLES)."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from app import idempotency
from app.auth import current_tenant
from app.docs.examples import ERROR_EXAMPLES
from app.notifications import service
from app.notifications.schemas import (
    DeliveryListQuery,
    DeliveryOut,
    NotificationCreate,
    NotificationCreated,
    NotificationDetail,
    NotificationListQuery,
    NotificationOut,
)
from app.schemas import LINK_HEADER_DOC, ErrorSchema, page_headers
from app.web import Blueprint

blp = Blueprint(
    "notifications",
    __name__,
    url_prefix="/v0/notifications",
    description="Notification endpoints of the caller's tenant; 'admin' role only.",
)

UNKNOWN_EXAMPLE = {
    "message": "Unknown notification endpoint '9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d'",
    "error_code": "UnknownNotificationEndpoint",
    "details": {"notification_id": "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"},
}
# The words and example bodies of the errors these routes document themselves.
unknown_endpoint = blp.alt_response(
    404,
    schema=ErrorSchema,
    description="UnknownNotificationEndpoint: the tenant has no notification endpoint of that "
    "id (another tenant's are unknown too)",
    examples={"UnknownNotificationEndpoint": {"value": UNKNOWN_EXAMPLE}},
)
at_quota = blp.alt_response(
    409,
    schema=ErrorSchema,
    description="QuotaExceeded: the tenant has as many endpoints as its quota allows "
    "(TENANT_MAX_NOTIFICATION_ENDPOINTS)",
    examples={
        code: {"value": ERROR_EXAMPLES[code], "summary": code}
        for code in ("QuotaExceeded", "IdempotencyKeyInProgress")
    },
)


def _detail(endpoint):
    """An endpoint as GET shows it: with its delivery counts."""
    endpoint.deliveries = service.delivery_counts(endpoint)
    return endpoint


@blp.route("")
class Notifications(MethodView):
    """The caller's tenant's notification endpoints."""

    @blp.arguments(NotificationListQuery, location="query", as_kwargs=True, unknown=ma.RAISE)
    @blp.response(200, NotificationOut(many=True), headers=LINK_HEADER_DOC)
    def get(self, limit, after=None):
        """List notification endpoints

        Oldest first, at most `limit` per page; the `Link` header points at the
        next page. Secrets are never shown.
        """
        found = service.list_endpoints(current_tenant(), limit + 1, after)
        page = found[:limit]
        cursor = str(page[-1].uid) if len(found) > limit else None
        return page, 200, page_headers(cursor, limit)

    @idempotency.idempotent(blp, secret_fields=("secret",))
    @blp.arguments(NotificationCreate)
    @blp.response(201, NotificationCreated)
    @at_quota
    def post(self, body):
        """Register a notification endpoint

        The events it subscribes to are POSTed to its URL as JSON
        (`{"event_id", "type", "created_at", "tenant", "data"}`), each signed:
        `X-Pipeline-Manager-Signature: v1=<hex>` is the HMAC-SHA256, keyed with
        the endpoint's `secret`, of `X-Pipeline-Manager-Timestamp`, a `.`, and
        the body's bytes. A receiver checks it (in constant time), refuses a
        timestamp more than a few minutes from its own clock (a replay), and
        deduplicates on `event_id` (`X-Pipeline-Manager-Event-Id`): delivery is
        at least once. A 2xx answer acknowledges an event; anything else is
        retried with exponential backoff for NOTIFICATION_RETRY_HOURS (24)
        after it. The answer holds the `secret`, shown this once; the service
        stores it to sign with (unlike an API key, kept only as a hash).
        """
        endpoint, _secret = service.create_endpoint(current_tenant(), **body)
        headers = {"Location": f"/v0/notifications/{endpoint.uid}", "Cache-Control": "no-store"}
        # NotificationCreated shows the stored secret; no other shape has it.
        return endpoint, 201, headers


@blp.route("/<notification_id>")
class NotificationItem(MethodView):
    """One notification endpoint."""

    @blp.response(200, NotificationDetail)
    @unknown_endpoint
    def get(self, notification_id):
        """Get a notification endpoint

        With how its deliveries stand (`delivered`, `pending`, `dead`) and
        its last error; never its secret.
        """
        return _detail(service.get_endpoint(current_tenant(), notification_id))

    @blp.response(204)
    @unknown_endpoint
    def delete(self, notification_id):
        """Remove a notification endpoint

        Its pending deliveries are dropped with it.
        """
        service.remove_endpoint(current_tenant(), notification_id)


@blp.route("/<notification_id>/test", methods=["POST"])
@idempotency.idempotent(blp)
@blp.response(202, DeliveryOut)
@unknown_endpoint
def send_test(notification_id):
    """Send a test event

    Queues a `notification.test` event to this endpoint alone, whatever it
    subscribes to; follow it in the endpoint's deliveries.
    """
    delivery = service.send_test(current_tenant(), notification_id)
    location = f"/v0/notifications/{notification_id}/deliveries"
    return delivery, 202, {"Location": location}


@blp.route("/<notification_id>/deliveries", methods=["GET"])
@blp.arguments(DeliveryListQuery, location="query", as_kwargs=True, unknown=ma.RAISE)
@blp.response(200, DeliveryOut(many=True), headers=LINK_HEADER_DOC)
@unknown_endpoint
def list_deliveries(notification_id, limit, after=None):
    """List a notification endpoint's deliveries

    Newest first, at most `limit` per page; the `Link` header points at the
    next (older) page.
    """
    endpoint = service.get_endpoint(current_tenant(), notification_id)
    found = service.list_deliveries(endpoint, limit + 1, after)
    page = found[:limit]
    cursor = str(page[-1].event_id) if len(found) > limit else None
    return page, 200, page_headers(cursor, limit)
