"""Pipelines: definitions, views and the lifecycle."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the pipelines blueprint."""
    from app.pipelines.routes import blp
    from app.web import api

    api.register_blueprint(blp)
