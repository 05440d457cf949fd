"""Pipelines: definitions, views and the lifecycle."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the pipelines blueprint."""
    from app.extensions import api
    from app.pipelines.routes import blp

    api.register_blueprint(blp)
