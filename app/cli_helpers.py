"""What every command group of the command line shares.

Each resource package with commands has a ``cli.py`` holding one
:class:`OperatorGroup` built from these helpers; :mod:`app.cli` assembles the
groups. This module imports none of them. Commands act as an operator of one
tenant (``--tenant``, default ``default``) directly through the service layer,
so the CLI and the API share every rule. Results go to stdout (``--json`` gives
the API's shapes), errors to stderr as ``Error: <message> (<error_code>)``
plus the details as JSON, with exit status 1; status 2 stays click's usage
error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo
from sqlalchemy.exc import DBAPIError

from app.auth import DEFAULT_TENANT
from app.database import is_transient_error
from app.errors import ApiError, InvalidRequest, ServiceUnavailable
from app.pipelines.models import NAME_FIELD_HELP, is_valid_name

if TYPE_CHECKING:
    import marshmallow as ma

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

        The app is built here (unless one is current already, as under
        ``flask --app wsgi``), and its context entered for the command. A
        database without the schema stops every command with one line saying
        what to run, before any of them touches a table; ``--help`` needs
        neither app nor database and answers whatever state it is in.
        """
        args = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        try:
            if not set(ctx.help_option_names) & set(args):
                _enter_app_context(ctx)
                require_schema()
            return super().invoke(ctx)
        except ApiError as error:
            fail(error)
        except DBAPIError as error:
            # A busy database is the operator's to retry, not a bug to trace back.
            if not is_transient_error(error):
                raise
            fail(ServiceUnavailable())


def _enter_app_context(ctx: click.Context) -> None:
    """Enter the context of the app the command runs in, for as long as ``ctx`` lasts."""
    app = ctx.ensure_object(ScriptInfo).load_app()
    if not current_app or current_app._get_current_object() is not app:
        ctx.with_resource(app.app_context())


def require_schema() -> None:
    """Raise ``ServiceUnavailable`` naming the fix when the schema is missing or old."""
    from app.database import schema_problem

    with current_app.app_context():
        problem = schema_problem()
    if problem is not None:
        raise ServiceUnavailable(problem, details={"reason": "schema_not_ready"})


def load_input(schema: ma.Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate command-line input with the API's schema; raise ``InvalidRequest``."""
    import marshmallow as ma  # with the schema: a command that reads only never loads it

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
