"""Who is calling: the principal of a request and its tenant.

Until credentials are checked, every ``/v0`` request acts as a writer of the
``default`` tenant.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, g, request

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a name, a tenant and a role."""

    name: str
    tenant: str
    role: str


def current_principal() -> Principal:
    """Return the principal of the current request."""
    return g.principal


def current_tenant() -> str:
    """Return the tenant that the current request acts for."""
    return g.principal.tenant


def _identify() -> None:
    """Attach the caller's principal to the request."""
    if request.path.startswith("/v0"):
        g.principal = Principal(name="operator", tenant=DEFAULT_TENANT, role="write")


def init_app(app: Flask) -> None:
    """Identify the caller of every request."""
    app.before_request(_identify)
