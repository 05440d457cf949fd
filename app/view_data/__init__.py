"""View data: what the engine pushed of each output view."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Nothing to wire yet: no route takes view changes in."""
