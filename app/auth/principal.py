"""The caller of a request, and the tenant it acts for.

A module of its own, importing nothing of the service: everything that needs
to know who is calling (routes, :mod:`app.idempotency`, the console) reads it
here, while the package's ``init_app`` assembles the guard and the key routes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import g

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    """The caller of a request: a name, a tenant, a role and when the credential expires.

    ``expires_at`` is None for a credential that never expires (an API key made
    without one); a JWT's is its ``exp``.
    """

    name: str
    tenant: str
    role: str
    expires_at: dt.datetime | None = None


def current_principal() -> Principal:
    """Return the principal of the current request."""
    return g.principal


def current_tenant() -> str:
    """Return the tenant that the current request acts for."""
    return g.principal.tenant
