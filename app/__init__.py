"""The pipeline-manager service: application factory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from app.config import default_config, load_or_create_secret_key


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build and configure the Flask application."""
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

    from app import database, errors, extensions, logs, metrics, web

    extensions.init_app(app)
    web.init_app(app)
    database.init_app(app)
    errors.init_app(app)
    logs.init_app(app)
    metrics.init_app(app)

    from app import (
        auth,
        cli,
        connectors,
        console,
        cors,
        delivery,
        docs,
        headers,
        health,
        notifications,
        pipelines,
        resets,
        view_data,
        worker,
    )

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
    return app
