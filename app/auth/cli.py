"""``flask api-keys ...``: an operator manages the API keys of one tenant."""

from __future__ import annotations

import click

from app.auth import service
from app.auth.models import ApiKey, Role
from app.auth.schemas import ApiKeyCreate, ApiKeyOut
from app.cli import OperatorGroup, echo_json, echo_table, json_option, load_input, tenant_option

api_keys = OperatorGroup("api-keys", help="Create, list and revoke API keys.")


def _when(value: object) -> str:
    """A time for the table, to the second; '-' for never."""
    return value.isoformat(timespec="seconds") if value is not None else "-"


@api_keys.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(Role.ALL),
    default=Role.READ,
    show_default=True,
    help="'read' may only read; 'write' may also change things.",
)
@tenant_option
def create_command(name: str, role: str, tenant: str) -> None:
    """Create API key NAME and print the key alone on stdout (it is shown this once)."""
    body = load_input(ApiKeyCreate(), {"name": name, "role": role})
    api_key, secret = service.create_key(tenant, body["name"], body["role"])
    click.echo(secret)
    click.echo(
        f"Created {api_key.role} key '{api_key.name}' of tenant '{api_key.tenant}'; "
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
        echo_json(ApiKeyOut(many=True).dump(keys))
        return
    echo_table(
        ("name", "role", "prefix", "created", "last used"),
        [(k.name, k.role, k.prefix, _when(k.created_at), _when(k.last_used_at)) for k in keys],
    )


@api_keys.command("revoke")
@click.argument("name")
@tenant_option
def revoke_command(name: str, tenant: str) -> None:
    """Revoke API key NAME: it stops working with the next request."""
    service.revoke_key(tenant, name)
    click.echo(f"Revoked API key '{name}' of tenant '{tenant}'")
