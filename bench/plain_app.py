"""The baseline: a bare Flask app answering ``{}``, to compare the service against."""

from __future__ import annotations

from flask import Flask


def create_plain_app() -> Flask:
    """Return a Flask app with one route, ``GET /`` answering ``{}``."""
    plain = Flask(__name__)

    @plain.get("/")
    def empty() -> dict:
        """Answer an empty JSON object."""
        return {}

    return plain


app = create_plain_app()
