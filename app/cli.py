"""The ``flask`` command line: it mirrors the API."""

from __future__ import annotations

import threading

import click
from flask import Flask, current_app
from flask.cli import with_appcontext


@click.command("worker")
@with_appcontext
def worker_command() -> None:
    """Run the worker in the foreground (resets, delivery) until interrupted."""
    from app.worker import run_loop

    stop = threading.Event()
    click.echo("worker running; Ctrl-C stops it", err=True)
    try:
        run_loop(current_app._get_current_object(), stop)
    except KeyboardInterrupt:
        stop.set()


def init_app(app: Flask) -> None:
    """Register the command groups."""
    app.cli.add_command(worker_command)
