"""View data: what the engine pushed of each output view."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the view-data blueprint."""
    from app.view_data.routes import blp
    from app.web import api

    api.register_blueprint(blp)
