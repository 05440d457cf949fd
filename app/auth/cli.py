"""``pipeline-manager api-keys ...``: an operator manages the API keys of one tenant.

The operator runs these on the server, so ``create`` may make a key of any
role and expiry (over HTTP a key is bounded by the credential creating it).
"""

from __future__ import annotations

import datetime as dt

import click

from app.auth import service
from app.auth.models import ApiKey, Role
from app.cli_helpers import (
    OperatorGroup,
    echo_json,
    echo_table,
    json_option,
    load_input,
    tenant_option,
)
from app.database import utcnow
from app.errors import InvalidRequest

api_keys = OperatorGroup("api-keys", help="Create, list and revoke API keys.")


def _when(value: object) -> str:
    """A time for the table, to the second; '-' for never."""
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _expires_at(expires_in: int | None, expires_at: str | None) -> str | None:
    """The expiry asked for, as the API's ISO 8601 string; None for a key that never expires."""
    if expires_in is not None and expires_at is not None:
        raise InvalidRequest(
            "Give --expires-in or --expires-at, not both",
            details={"expires_at": ["--expires-in and --expires-at exclude each other"]},
        )
    if expires_in is not None:
        return (utcnow() + dt.timedelta(seconds=expires_in)).isoformat()
    return expires_at


@api_keys.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(Role.ALL),
    default=Role.READ,
    show_default=True,
    help="'read' may only read; 'write' may also change pipelines; 'admin' may also "
    "manage API keys.",
)
@click.option(
    "--expires-in",
    type=click.IntRange(min=1),
    help="Seconds until the key stops working (default: never).",
)
@click.option(
    "--expires-at",
    metavar="ISO",
    help="When the key stops working, ISO 8601 with a time zone (2030-01-01T00:00:00Z).",
)
@tenant_option
def create_command(
    name: str, role: str, expires_in: int | None, expires_at: str | None, tenant: str
) -> None:
    """Create API key NAME and print the key alone on stdout (it is shown this once)."""
    data = {"name": name, "role": role, "expires_at": _expires_at(expires_in, expires_at)}
    from app.auth.schemas import ApiKeyCreate  # marshmallow: not for the table listing

    body = load_input(ApiKeyCreate(), data)
    api_key, secret = service.create_key(tenant, body["name"], body["role"], body["expires_at"])
    click.echo(secret)
    expiry = f", expiring at {_when(api_key.expires_at)}" if api_key.expires_at else ""
    click.echo(
        f"Created {api_key.role} key '{api_key.name}' of tenant '{api_key.tenant}'{expiry}; "
        "store it now, it cannot be shown again",
        err=True,
    )


@api_keys.command("list")
@tenant_option
@json_option
def list_command(tenant: str, as_json: bool) -> None:
    """List the tenant's API keys (never the keys themselves)."""
    keys: list[ApiKey] = service.list_keys(tenant)
    if as_json:
        from app.auth.schemas import ApiKeyOut  # marshmallow: not for the table listing

        echo_json(ApiKeyOut(many=True).dump(keys))
        return
    echo_table(
        ("name", "role", "prefix", "created", "last used", "expires"),
        [
            (
                k.name,
                k.role,
                k.prefix,
                _when(k.created_at),
                _when(k.last_used_at),
                _when(k.expires_at),
            )
            for k in keys
        ],
    )


@api_keys.command("revoke")
@click.argument("name")
@tenant_option
def revoke_command(name: str, tenant: str) -> None:
    """Revoke API key NAME: it stops working with the next request."""
    service.revoke_key(tenant, name)
    click.echo(f"Revoked API key '{name}' of tenant '{tenant}'")
