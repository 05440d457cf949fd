"""The ``pipeline-manager`` command line: it mirrors the API.

The one place that assembles it. Each resource package with commands has a
``cli.py`` holding one :class:`~app.cli_helpers.OperatorGroup` (built from
:mod:`app.cli_helpers`, which imports none of them); :data:`GROUPS` names
them, and this module imports none of them at the top. So
``pipeline-manager --help`` answers without loading the models or the
services, and a resource's command runs in the app of
:func:`app.create_command_app`, without routes, docs or console. The commands
of the whole app (``db``, ``openapi``, ``run``, ``worker`` ...) get the app of
:func:`app.create_app`. :func:`init_app` registers every group and the
``worker`` command on that app, so the same commands answer
``flask --app wsgi ...``. ``python -m bench --cli`` measures how soon they answer.
"""

from __future__ import annotations

import importlib
import signal
import threading
from typing import NamedTuple

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, ScriptInfo, with_appcontext


class Group(NamedTuple):
    """Where a resource's command group lives, and its one-line help."""

    module: str
    attribute: str
    help: str


# One OperatorGroup per resource package; a new resource's group is added here.
# The help is said here too, so that `--help` lists the groups without importing
# them (tests/test_cli_imports.py checks it against each group's own).
GROUPS = {
    "pipelines": Group("app.pipelines.cli", "pipelines", "Create, inspect and drive pipelines."),
    "connectors": Group(
        "app.connectors.cli", "connectors", "Add, inspect and remove output connectors."
    ),
    "resets": Group(
        "app.resets.cli", "resets", "Reset output connectors and follow their progress."
    ),
    "api-keys": Group("app.auth.cli", "api_keys", "Create, list and revoke API keys."),
    "views": Group("app.view_data.cli", "views", "Push view changes; compact change logs."),
    "notifications": Group(
        "app.notifications.cli",
        "notifications",
        "Register, inspect, test and remove notification endpoints.",
    ),
}

# The commands Flask-Migrate and flask-smorest add to the whole app, with their
# help, listed by `--help` without building it (the same test checks them).
APP_COMMANDS = {"db": "Perform database migrations.", "openapi": "OpenAPI commands."}


def load_group(name: str) -> click.Command:
    """Import the resource package's ``cli`` module and return its command group."""
    group = GROUPS[name]
    return getattr(importlib.import_module(group.module), group.attribute)


@click.command("worker")
@with_appcontext
def worker_command() -> None:
    """Run the worker in the foreground (resets, delivery, notifications) until interrupted."""
    from app.cli_helpers import fail, require_schema
    from app.delivery import wake
    from app.errors import ServiceUnavailable
    from app.worker import run_loop

    try:
        require_schema()
    except ServiceUnavailable as error:
        fail(error)
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
    app.cli.add_command(worker_command)
    _name_the_migrations_folder()
    for name in GROUPS:
        app.cli.add_command(load_group(name))


class PipelineManagerGroup(FlaskGroup):
    """Flask's command group, which imports a resource's commands only when they run.

    Flask's own group builds the app to list its commands and to find any of
    them; this one lists them from :data:`GROUPS` and :data:`APP_COMMANDS`,
    and builds the whole app only for a command of the whole app.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Name every command, without building the app."""
        self._load_plugin_commands()
        return sorted({*self.commands, *GROUPS, *APP_COMMANDS, worker_command.name})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """Return a resource's group, importing only its module; else find it as Flask does."""
        if name in GROUPS:
            return load_group(name)
        return super().get_command(ctx, name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Find the command to run; a resource's command runs in the command app."""
        name, command, rest = super().resolve_command(ctx, args)
        info = ctx.ensure_object(ScriptInfo)
        if name in GROUPS and info.create_app is self.create_app:
            from app import create_command_app

            info.create_app = create_command_app
        return name, command, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands with their one-line help, importing no resource's commands."""
        helps = {name: group.help for name, group in GROUPS.items()}
        helps.update(APP_COMMANDS)
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            command = self.commands.get(name) or (
                worker_command if name == worker_command.name else None
            )
            if command is not None:
                rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, click.utils.make_default_short_help(helps[name], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def main() -> None:
    """The ``pipeline-manager`` command: this app's command line, by its own name.

    Installed with the project (``[project.scripts]``), so the command is the
    same wherever the venv's ``bin`` is on the path, and no other program of
    Flask's command name can answer instead. It needs no ``--app``.
    """

    def create_app() -> Flask:
        """Build the whole app (imported only when a command needs it)."""
        from app import create_app

        return create_app()

    group = PipelineManagerGroup(
        name="pipeline-manager",
        create_app=create_app,
        help="Manage the pipeline-manager service: pipelines, connectors, resets, "
        "API keys, notification endpoints, the worker and the database.",
    )
    group.main(prog_name="pipeline-manager")
