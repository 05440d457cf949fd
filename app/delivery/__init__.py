"""Delivery: output connectors stream their view's changes to their sinks.

The worker (:mod:`app.delivery.worker`) does the work; this package also
serves each connector's delivery statistics.
"""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the delivery statistics blueprint."""
    from app.delivery.routes import blp
    from app.web import api

    api.register_blueprint(blp)
