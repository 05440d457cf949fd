"""View data: what the engine pushed of each output view."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the view-data blueprint."""
    from app.extensions import api
    from app.view_data.routes import blp

    api.register_blueprint(blp)
