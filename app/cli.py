"""The ``pipeline-manager`` command line: it mirrors the API.

The one place that assembles it: each resource package with commands has a
``cli.py`` holding one :class:`~app.cli_helpers.OperatorGroup` (built from
:mod:`app.cli_helpers`, which imports none of them), and :func:`init_app`
registers those groups and the ``worker`` command on the app. The same
commands answer ``flask --app wsgi ...``.
"""

from __future__ import annotations

import signal
import threading

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.auth.cli import api_keys
from app.cli_helpers import fail, require_schema
from app.connectors.cli import connectors
from app.errors import ServiceUnavailable
from app.notifications.cli import notifications
from app.pipelines.cli import pipelines
from app.resets.cli import resets
from app.view_data.cli import views

# One OperatorGroup per resource package; a new resource's group is added here.
GROUPS = (pipelines, connectors, resets, api_keys, views, notifications)


@click.command("worker")
@with_appcontext
def worker_command() -> None:
    """Run the worker in the foreground (resets, delivery, notifications) until interrupted."""
    from app.delivery import wake
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
    for group in GROUPS:
        app.cli.add_command(group)


def main() -> None:
    """The ``pipeline-manager`` command: this app's command line, by its own name.

    Installed with the project (``[project.scripts]``), so the command is the
    same wherever the venv's ``bin`` is on the path, and no other program of
    Flask's command name can answer instead. It needs no ``--app``.
    """
    from flask.cli import FlaskGroup

    from app import create_app

    group = FlaskGroup(
        name="pipeline-manager",
        create_app=lambda: create_app(),
        help="Manage the pipeline-manager service: pipelines, connectors, resets, "
        "API keys, notification endpoints, the worker and the database.",
    )
    group.main(prog_name="pipeline-manager")
