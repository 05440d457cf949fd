"""The pipeline-manager service: application factories."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from app.config import default_config, load_or_create_secret_key


def _configured_app(test_config: Mapping[str, Any] | None) -> Flask:
    """Build the app with its configuration, database, error handlers and logging."""
    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    os.makedirs(app.instance_path, exist_ok=True)

    app.config.from_mapping(default_config(app.instance_path))
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("PIPELINE_MANAGER")
    if test_config is not None:
        app.config.from_mapping(test_config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = load_or_create_secret_key(app.instance_path)

    from app.transports.postgres_spec import dsn_grants

    dsn_grants(app.config)  # a malformed grant table stops the service here

    from app import database, errors, extensions, logs

    extensions.init_app(app)
    database.init_app(app)
    errors.init_app(app)
    logs.init_app(app)
    return app


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build and configure the Flask application: the API, docs, console, worker and CLI."""
    app = _configured_app(test_config)

    from app import (
        auth,
        cli,
        connectors,
        console,
        cors,
        delivery,
        docs,
        extensions,
        headers,
        health,
        metrics,
        notifications,
        pipelines,
        resets,
        view_data,
        web,
        worker,
    )

    extensions.init_migrations(app)
    web.init_app(app)
    metrics.init_app(app)
    modules = (
        cors,
        headers,
        auth,
        health,
        pipelines,
        connectors,
        resets,
        view_data,
        delivery,
        notifications,
        docs,
        cli,
    )
    for module in (*modules, console, worker):
        module.init_app(app)
    # Last: it answers the plain reset_status poll before Flask, with every hook in place.
    from app.resets import fast_status

    fast_status.install(app)
    return app


def create_command_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app one resource command runs in: no routes, docs or console.

    ``pipeline-manager api-keys list`` and its kin act through the service
    layer, which needs the configuration, the database and the state the
    services keep (the key cache, the reset token signer). Leaving the web side
    out keeps the command's start short (``python -m bench --cli`` measures it).
    """
    app = _configured_app(test_config)

    from app import auth, resets

    auth.init_state(app)
    resets.init_state(app)
    return app
