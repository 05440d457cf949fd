"""Output connectors of views."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the connectors blueprint."""
    from app.connectors.routes import blp
    from app.web import api

    api.register_blueprint(blp)
