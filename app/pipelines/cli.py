"""``pipeline-manager pipelines ...``: create, inspect and drive pipelines of one tenant."""

from __future__ import annotations

from collections.abc import Callable

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
from app.pipelines import service
from app.pipelines.models import Pipeline
from app.pipelines.schemas import PipelineCreate, PipelineOut

pipelines = OperatorGroup("pipelines", help="Create, inspect and drive pipelines.")


def _show(pipeline: Pipeline, as_json: bool, message: str | None = None) -> None:
    """Print a pipeline as JSON, or a one-line message (or all its fields) as text."""
    if as_json:
        echo_json(PipelineOut().dump(pipeline))
    elif message:
        click.echo(message)
    else:
        echo_fields(PipelineOut().dump(pipeline))


@pipelines.command("create")
@click.argument("name")
@click.option("--view", "views", multiple=True, help="An output view (repeat for more).")
@click.option("--description", default="", help="What the pipeline is for.")
@tenant_option
@json_option
def create_command(
    name: str, views: tuple[str, ...], description: str, tenant: str, as_json: bool
) -> None:
    """Create a stopped pipeline NAME with its output views."""
    body = load_input(
        PipelineCreate(), {"name": name, "description": description, "views": list(views)}
    )
    pipeline = service.create_pipeline(tenant, **body)
    views_text = ", ".join(pipeline.view_names) or "none"
    _show(pipeline, as_json, f"Created pipeline '{pipeline.name}' (views: {views_text})")


@pipelines.command("list")
@tenant_option
@json_option
def list_command(tenant: str, as_json: bool) -> None:
    """List the tenant's pipelines."""
    found = service.list_pipelines(tenant)
    if as_json:
        echo_json(PipelineOut(many=True).dump(found))
        return
    echo_table(
        ("name", "status", "incarnation", "views", "status_since"),
        [
            (p.name, p.status, p.incarnation, ",".join(p.view_names), p.status_since.isoformat())
            for p in found
        ],
    )


@pipelines.command("show")
@click.argument("name")
@tenant_option
@json_option
def show_command(name: str, tenant: str, as_json: bool) -> None:
    """Show pipeline NAME."""
    _show(service.get_pipeline(tenant, name), as_json)


def _lifecycle_command(action: str, summary: str, done: str) -> None:
    """Register ``pipeline-manager pipelines <action> NAME``, calling the service's function."""
    act: Callable[[Pipeline], Pipeline] = getattr(service, action)

    @click.argument("name")
    @tenant_option
    @json_option
    def command(name: str, tenant: str, as_json: bool) -> None:
        pipeline = act(service.get_pipeline(tenant, name))
        _show(
            pipeline,
            as_json,
            f"Pipeline '{pipeline.name}' {done}; it is {pipeline.status} "
            f"(incarnation {pipeline.incarnation})",
        )

    command.__doc__ = summary
    pipelines.command(action, help=summary)(command)


_lifecycle_command("start", "Start pipeline NAME (a new incarnation) or resume it.", "started")
_lifecycle_command("stop", "Stop pipeline NAME, ending its incarnation.", "stopped")
_lifecycle_command("pause", "Pause running pipeline NAME; its incarnation goes on.", "paused")
_lifecycle_command("resume", "Resume paused pipeline NAME.", "resumed")
_lifecycle_command(
    "restart", "Stop pipeline NAME and start it again (a new incarnation).", "restarted"
)


@pipelines.command("delete")
@click.argument("name")
@tenant_option
def delete_command(name: str, tenant: str) -> None:
    """Delete stopped pipeline NAME with its views, connectors and resets."""
    service.delete_pipeline(service.get_pipeline(tenant, name))
    click.echo(f"Deleted pipeline '{name}'")
