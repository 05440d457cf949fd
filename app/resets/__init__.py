"""Output connector resets: tokens, status and the executor that does them."""

from flask import Flask


def init_state(app: Flask) -> None:
    """Build the token signer, which the service uses whether or not the app serves HTTP."""
    from app.resets import tokens

    tokens.init_app(app)


def init_app(app: Flask) -> None:
    """Build the token signer and the event-stream slots; register the resets blueprint."""
    from app.resets import events
    from app.resets.routes import blp
    from app.web import api

    init_state(app)
    events.init_app(app)
    api.register_blueprint(blp)
