"""``pipeline-manager connectors ...``: output connectors of a pipeline's views."""

from __future__ import annotations

import json

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
from app.connectors import service
from app.connectors.models import Connector
from app.connectors.schemas import ConnectorCreate, ConnectorOut
from app.pipelines.service import get_pipeline, get_view
from app.transports import TRANSPORTS, get_transport

connectors = OperatorGroup("connectors", help="Add, inspect and remove output connectors.")


def _config_text(connector: Connector) -> str:
    """The connector's settings as ``key=value`` pairs, secrets redacted."""
    shown = get_transport(connector.transport).shown_config(connector.config)
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in shown.items())


@connectors.command("add")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@click.option(
    "--transport",
    type=click.Choice(sorted(TRANSPORTS)),
    required=True,
    help="How the connector reaches its sink.",
)
@click.option(
    "--path",
    help="file: the sink file; delta: the table's folder; relative to the sink directory.",
)
@click.option("--url", help="http: the http(s) URL that change batches are POSTed to.")
@click.option("--timeout", type=float, help="http: seconds to wait for the sink.")
@click.option(
    "--dsn-env",
    help="postgres: the server's environment variable (SINK_DSN_...) that holds the DSN.",
)
@click.option("--table", help="postgres: the table, name or schema.name.")
@click.option(
    "--key",
    "keys",
    multiple=True,
    help="postgres, delta (mode rows): a column that identifies a record (repeat for several).",
)
@click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="NAME=TYPE",
    help="delta: a column of the table and its type, e.g. id=long (repeat for each).",
)
@click.option(
    "--mode",
    help="postgres: rows (one column per field, the default) or jsonb; "
    "delta: changes (the default) or rows.",
)
@tenant_option
@json_option
def add_command(
    pipeline: str,
    view: str,
    connector: str,
    transport: str,
    path: str | None,
    url: str | None,
    timeout: float | None,
    dsn_env: str | None,
    table: str | None,
    keys: tuple[str, ...],
    columns: tuple[str, ...],
    mode: str | None,
    tenant: str,
    as_json: bool,
) -> None:
    """Add CONNECTOR to VIEW of stopped PIPELINE.

    \b
    file:     --path out/totals.jsonl
    http:     --url http://127.0.0.1:9000/in [--timeout 10]
    postgres: --dsn-env SINK_DSN_WAREHOUSE --table analytics.totals [--key id]...
    delta:    --path tables/totals [--column id=long]... [--mode rows --key id]
    """
    given = {
        "path": path,
        "url": url,
        "timeout": timeout,
        "dsn_env": dsn_env,
        "table": table,
        "key": list(keys) or None,
        "mode": mode,
        # NAME=TYPE pairs, in order; the transport driver checks names and types.
        "columns": dict(c.partition("=")[::2] for c in columns) or None,
    }
    # Only the options given become settings: the transport driver refuses the others.
    config = {k: v for k, v in given.items() if v is not None}
    body = load_input(
        ConnectorCreate(), {"name": connector, "transport": {"name": transport, "config": config}}
    )
    added = service.add_connector(get_pipeline(tenant, pipeline), view, **body)
    if as_json:
        echo_json(ConnectorOut().dump(added))
    else:
        click.echo(
            f"Added connector '{added.name}' to {pipeline}/{view} "
            f"({added.transport}: {_config_text(added)})"
        )


@connectors.command("list")
@click.argument("pipeline")
@click.argument("view", required=False)
@tenant_option
@json_option
def list_command(pipeline: str, view: str | None, tenant: str, as_json: bool) -> None:
    """List the connectors of PIPELINE (of its VIEW only, if given)."""
    found = get_pipeline(tenant, pipeline)
    views = [get_view(found, view)] if view else found.views
    listed = [c for v in views for c in service.list_connectors(v)]
    if as_json:
        echo_json(ConnectorOut(many=True).dump(listed))
        return
    echo_table(
        ("view", "connector", "transport", "config"),
        [(c.view.name, c.name, c.transport, _config_text(c)) for c in listed],
    )


@connectors.command("show")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@tenant_option
@json_option
def show_command(pipeline: str, view: str, connector: str, tenant: str, as_json: bool) -> None:
    """Show CONNECTOR of VIEW of PIPELINE."""
    found = service.get_connector(get_pipeline(tenant, pipeline), view, connector)
    data = ConnectorOut().dump(found)
    if as_json:
        echo_json(data)
    else:
        transport = data.pop("transport")
        echo_fields({**data, "transport": transport["name"], "config": _config_text(found)})


@connectors.command("stats")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@tenant_option
@json_option
def stats_command(pipeline: str, view: str, connector: str, tenant: str, as_json: bool) -> None:
    """Show how CONNECTOR's delivery stands: health, sync state, position, errors, resets."""
    from app.delivery.schemas import ConnectorStats
    from app.delivery.service import connector_stats

    data = ConnectorStats().dump(connector_stats(get_pipeline(tenant, pipeline), view, connector))
    if as_json:
        echo_json(data)
        return
    resets = data.pop("resets")
    transport = data.pop("transport")
    echo_fields(
        {
            **data,
            "transport": transport["name"],
            **{f"resets.{k}": v for k, v in resets.items()},
        }
    )


@connectors.command("pause")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@tenant_option
def pause_command(pipeline: str, view: str, connector: str, tenant: str) -> None:
    """Pause CONNECTOR of VIEW of PIPELINE: it keeps its place and streams nothing."""
    service.pause_connector(get_pipeline(tenant, pipeline), view, connector)
    click.echo(f"Paused connector '{connector}' of {pipeline}/{view}")


@connectors.command("start")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@click.option(
    "--skip",
    is_flag=True,
    help="Start at the change log's end, skipping what was produced while paused "
    "(the sink never gets it; a reset brings it back in line).",
)
@tenant_option
def start_command(pipeline: str, view: str, connector: str, skip: bool, tenant: str) -> None:
    """Start paused CONNECTOR of VIEW of PIPELINE where it stopped (or, with --skip, now)."""
    started = service.start_connector(get_pipeline(tenant, pipeline), view, connector, skip=skip)
    where = f"at change {started.delivered_seq}" if skip else "where it stopped"
    click.echo(f"Started connector '{connector}' of {pipeline}/{view} {where}")


@connectors.command("remove")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@tenant_option
def remove_command(pipeline: str, view: str, connector: str, tenant: str) -> None:
    """Remove CONNECTOR from VIEW of stopped PIPELINE."""
    service.remove_connector(get_pipeline(tenant, pipeline), view, connector)
    click.echo(f"Removed connector '{connector}' from {pipeline}/{view}")
