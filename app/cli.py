"""The ``flask`` command line: it mirrors the API.

Each resource package with commands has a ``cli.py`` holding one
:class:`OperatorGroup`; :func:`init_app` registers them. Commands act as an
operator of one tenant (``--tenant``, default ``default``) directly through the
service layer, so the CLI and the API share every rule. Results go to stdout
(``--json`` gives the API's shapes), errors to stderr as
``Error: <message> (<error_code>)`` plus the details as JSON, with exit status 1;
status 2 stays click's usage error.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import click
import marshmallow as ma
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy.exc import DBAPIError

from app.auth import DEFAULT_TENANT
from app.database import is_transient_error
from app.errors import ApiError, InvalidRequest, ServiceUnavailable
from app.pipelines.models import is_valid_name
from app.pipelines.schemas import NAME_FIELD_HELP

EXIT_ERROR = 1


def render_error(error: ApiError) -> None:
    """Print an error as the API would tell it: message, error_code, details."""
    click.echo(f"Error: {error.message} ({error.error_code})", err=True)
    if error.details:
        click.echo(json.dumps(error.details, sort_keys=True, default=str), err=True)


def fail(error: ApiError) -> NoReturn:
    """Render an error and leave with the error exit status."""
    render_error(error)
    raise click.exceptions.Exit(EXIT_ERROR)


class OperatorGroup(AppGroup):
    """A command group whose commands render every service error the same way.

    Errors are caught around the whole group, so parameter callbacks (such as
    the ``--tenant`` check) are covered as well as the commands themselves.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the sub-command; turn service errors into ``Error: ...`` and exit 1.

        A database without the schema stops every command with one line saying
        what to run, before any of them touches a table.
        """
        try:
            _require_schema()
            return super().invoke(ctx)
        except ApiError as error:
            fail(error)
        except DBAPIError as error:
            # A busy database is the operator's to retry, not a bug to trace back.
            if not is_transient_error(error):
                raise
            fail(ServiceUnavailable())


def _require_schema() -> None:
    """Raise ``ServiceUnavailable`` naming the fix when the schema is missing or old."""
    from app.database import schema_problem

    with current_app.app_context():
        problem = schema_problem()
    if problem is not None:
        raise ServiceUnavailable(problem, details={"reason": "schema_not_ready"})


def load_input(schema: ma.Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate command-line input with the API's schema; raise ``InvalidRequest``."""
    try:
        return schema.load(data)
    except ma.ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"input": exc.messages}
        raise InvalidRequest(
            "The input is not valid: " + ", ".join(sorted(map(str, messages))),
            details=messages,
        ) from None


def _check_tenant(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Refuse a tenant name the API could never hold."""
    if not is_valid_name(value):
        raise InvalidRequest(
            f"Invalid tenant name {value!r}", details={"tenant": [NAME_FIELD_HELP]}
        )
    return value


def tenant_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--tenant`` (default ``default``) to a command that names a pipeline."""
    return click.option(
        "--tenant",
        default=DEFAULT_TENANT,
        show_default=True,
        callback=_check_tenant,
        help="The tenant to act for: whose pipelines, connectors or keys are named.",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--json``: print the result in the API's JSON shape."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (the API's shape) instead of text."
    )(f)


def echo_json(data: Any) -> None:
    """Print JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as left-aligned columns under upper-case headers."""
    cells = [[h.upper() for h in headers]]
    cells += [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def echo_fields(data: Mapping[str, Any]) -> None:
    """Print a mapping as aligned ``key: value`` lines."""
    width = max((len(k) for k in data), default=0) + 1
    for key, value in data.items():
        if isinstance(value, list | tuple):
            value = ", ".join(map(str, value))
        click.echo(f"{key + ':':<{width}} {'' if value is None else value}".rstrip())


def stderr_is_tty() -> bool:
    """Tell whether stderr is a terminal (progress bars) or a file or pipe (plain lines)."""
    return sys.stderr.isatty()


@click.command("worker")
@with_appcontext
def worker_command() -> None:
    """Run the worker in the foreground (resets, delivery) until interrupted."""
    from app.database import schema_problem
    from app.delivery import wake
    from app.worker import run_loop

    problem = schema_problem()
    if problem is not None:
        fail(ServiceUnavailable(problem, details={"reason": "schema_not_ready"}))
    stop = threading.Event()
    # SIGTERM (a service manager's stop) ends it like Ctrl-C: each thread finishes
    # the claim it is on, which gives its lease back, so no one waits for expiry.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: (stop.set(), wake.ring()))
    click.echo("worker running; Ctrl-C or SIGTERM stops it", err=True)
    try:
        run_loop(current_app._get_current_object(), stop)
    except KeyboardInterrupt:
        stop.set()


def _name_the_migrations_folder() -> None:
    """Make ``db ... --help`` name this project's migrations folder, not Flask-Migrate's default.

    The app passes ``app/migrations`` to Flask-Migrate, whose options still say
    the default is ``migrations``.
    """
    from flask_migrate.cli import db as db_group

    for command in (db_group, *db_group.commands.values()):
        for param in command.params:
            if param.name == "directory" and isinstance(param, click.Option):
                param.help = "Migration script directory (default: app/migrations)"


def init_app(app: Flask) -> None:
    """Register the ``worker`` command and every resource's command group."""
    from app.auth.cli import api_keys
    from app.connectors.cli import connectors
    from app.pipelines.cli import pipelines
    from app.resets.cli import resets
    from app.view_data.cli import views

    app.cli.add_command(worker_command)
    _name_the_migrations_folder()
    # One OperatorGroup per resource package; a new resource's group is added here.
    for group in (pipelines, connectors, resets, api_keys, views):
        app.cli.add_command(group)


def main() -> None:
    """The ``pipeline-manager`` command: the ``flask`` commands of this app, by their own name.

    Installed with the project (``[project.scripts]``), so the command is the
    same wherever the venv's ``bin`` is on the path, and no other program
    called ``flask`` can answer instead. It needs no ``--app``.
    """
    from flask.cli import FlaskGroup

    from app import create_app

    group = FlaskGroup(
        name="pipeline-manager",
        create_app=lambda: create_app(),
        help="Manage the pipeline-manager service: pipelines, connectors, resets, "
        "API keys, the worker and the database.",
    )
    group.main(prog_name="pipeline-manager")
