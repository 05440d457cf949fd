"""Output connector resets: tokens, status and the executor that does them."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Build the token signer and the event-stream slots, and register the resets blueprint."""
    from app.resets import events, tokens
    from app.resets.routes import blp
    from app.web import api

    tokens.init_app(app)
    events.init_app(app)
    api.register_blueprint(blp)
