"""``pipeline-manager notifications ...``: a tenant's notification endpoints, as in the API."""

from __future__ import annotations

import click

from app.cli_helpers import (
    OperatorGroup,
    echo_fields,
    echo_json,
    echo_table,
    json_option,
    load_input,
    tenant_option,
)
from app.notifications import service
from app.notifications.models import EventType
from app.notifications.schemas import (
    DeliveryOut,
    NotificationCreate,
    NotificationCreated,
    NotificationDetail,
    NotificationOut,
)

notifications = OperatorGroup(
    "notifications", help="Register, inspect, test and remove notification endpoints."
)


def _when(value: object) -> str:
    """A time for a table, to the second; '-' for none."""
    return value.isoformat(timespec="seconds") if value is not None else "-"


@notifications.command("add")
@click.argument("url")
@click.option(
    "--event",
    "events",
    multiple=True,
    required=True,
    type=click.Choice(EventType.SUBSCRIBABLE),
    help="An event to send to it (repeat for several).",
)
@click.option("--name", help="A label, for people.")
@click.option("--description", default="", help="Free text.")
@tenant_option
@json_option
def add_command(
    url: str,
    events: tuple[str, ...],
    name: str | None,
    description: str,
    tenant: str,
    as_json: bool,
) -> None:
    """Register URL for the tenant's events; print its signing secret alone on stdout.

    The secret is shown this once (with --json, in the API's shape); the
    endpoint's id is printed on stderr.
    """
    data = {"url": url, "events": list(events), "description": description}
    if name is not None:
        data["name"] = name
    body = load_input(NotificationCreate(), data)
    endpoint, secret = service.create_endpoint(tenant, **body)
    if as_json:
        echo_json(NotificationCreated().dump(endpoint))
        return
    click.echo(secret)
    click.echo(
        f"Registered notification endpoint {endpoint.uid} of tenant '{tenant}' "
        f"({', '.join(endpoint.events)}); store the secret now, it cannot be shown again",
        err=True,
    )


@notifications.command("list")
@tenant_option
@json_option
def list_command(tenant: str, as_json: bool) -> None:
    """List the tenant's notification endpoints (never their secrets)."""
    found = service.list_endpoints(tenant)
    data = NotificationOut(many=True).dump(found)
    if as_json:
        echo_json(data)
        return
    echo_table(
        ("id", "name", "url", "events", "created"),
        [
            (d["id"], d["name"] or "-", d["url"], ",".join(d["events"]), _when(e.created_at))
            for d, e in zip(data, found, strict=True)
        ],
    )


@notifications.command("show")
@click.argument("notification_id")
@tenant_option
@json_option
def show_command(notification_id: str, tenant: str, as_json: bool) -> None:
    """Show a notification endpoint and how its deliveries stand."""
    endpoint = service.get_endpoint(tenant, notification_id)
    endpoint.deliveries = service.delivery_counts(endpoint)
    data = NotificationDetail().dump(endpoint)
    if as_json:
        echo_json(data)
        return
    counts = data.pop("deliveries")
    echo_fields({**data, **{f"deliveries.{k}": v for k, v in counts.items()}})


@notifications.command("deliveries")
@click.argument("notification_id")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many."
)
@tenant_option
@json_option
def deliveries_command(notification_id: str, limit: int, tenant: str, as_json: bool) -> None:
    """List a notification endpoint's latest deliveries, newest first."""
    endpoint = service.get_endpoint(tenant, notification_id)
    found = service.list_deliveries(endpoint, limit)
    if as_json:
        echo_json(DeliveryOut(many=True).dump(found))
        return
    echo_table(
        ("event id", "type", "state", "attempts", "next attempt", "delivered", "last error"),
        [
            (
                d.event_id,
                d.type,
                d.state,
                d.attempts,
                _when(d.next_attempt_at),
                _when(d.delivered_at),
                d.last_error or "-",
            )
            for d in found
        ],
    )


@notifications.command("test")
@click.argument("notification_id")
@tenant_option
@json_option
def test_command(notification_id: str, tenant: str, as_json: bool) -> None:
    """Queue a notification.test event to that endpoint; print the event's id."""
    delivery = service.send_test(tenant, notification_id)
    if as_json:
        echo_json(DeliveryOut().dump(delivery))
        return
    click.echo(str(delivery.event_id))


@notifications.command("remove")
@click.argument("notification_id")
@tenant_option
def remove_command(notification_id: str, tenant: str) -> None:
    """Remove a notification endpoint and its pending deliveries."""
    service.remove_endpoint(tenant, notification_id)
    click.echo(f"Removed notification endpoint {notification_id} of tenant '{tenant}'")
