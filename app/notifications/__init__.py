"""Notifications: signed webhooks telling a tenant's endpoints what happened, from an outbox.

A tenant registers endpoints (:mod:`app.notifications.routes`, ``admin``
role), each with the event types it wants. Whoever changes a reset's or a
connector's state calls :mod:`app.notifications.events` (which calls
:func:`app.notifications.service.emit`) in the transaction that makes the
change; the worker (:mod:`app.worker`) asks
:func:`app.notifications.delivery.due_in` when something is due and sends it
with :func:`app.notifications.delivery.deliver_due`.
"""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the notifications blueprint."""
    from app.notifications.routes import blp
    from app.web import api

    api.register_blueprint(blp)
