"""API documentation pages."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Nothing beyond flask-smorest's /openapi.json yet."""
