"""Who is calling: authentication, roles and tenants.

Every ``/v0`` request carries ``Authorization: Bearer <credential>``: an API
key (``apikey:...``, see :mod:`app.auth.service`) or a JWT (see
:mod:`app.auth.jwt`). The check in :mod:`app.auth.guard` turns it into the
request's :class:`Principal`; routes act for :func:`current_tenant` only.
"""

from __future__ import annotations

from flask import Flask

from app.auth.principal import (
    DEFAULT_TENANT,
    Principal,
    current_principal,
    current_tenant,
)

__all__ = [
    "DEFAULT_TENANT",
    "Principal",
    "current_principal",
    "current_tenant",
    "init_app",
    "init_state",
]


def init_state(app: Flask) -> None:
    """Give the app its API-key cache, which the service keeps whether or not it serves HTTP."""
    from app.auth.service import KeyCache

    app.extensions["api_key_cache"] = KeyCache(float(app.config["API_KEY_CACHE_SECONDS"]))


def init_app(app: Flask) -> None:
    """Load the JWT keys once, guard every ``/v0`` request and add the key routes."""
    # Imported here: these modules import Principal from this package.
    from app.auth import guard, openapi
    from app.auth.jwt import JwtVerifier
    from app.auth.routes import blp
    from app.web import api

    app.extensions["jwt_verifier"] = JwtVerifier.from_config(app)
    init_state(app)
    app.before_request(guard.check_request)
    openapi.install(api.spec)
    api.register_blueprint(blp)
