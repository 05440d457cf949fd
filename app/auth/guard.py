"""The check in front of every ``/v0`` route: who is calling, and may they?

``ROUTE_ROLES`` declares the role each route and method needs: reads need
``read``, changes ``write``, managing API keys and notification endpoints
``admin``. The role matrix test (tests/test_roles.py) fails for a ``/v0``
route missing from it; until it is declared, such a route needs ``read`` to
read and ``write`` for anything else.
CORS preflights (OPTIONS) pass unchecked. The check runs before routing
errors are raised, so an anonymous caller gets 401 even for a route that does
not exist, and cannot map the API by probing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import current_app, g, request

from app.auth import Principal
from app.auth.jwt import JwtRejected
from app.auth.models import Role
from app.auth.service import KEY_PREFIX, KeyExpired, is_well_formed, principal_of_key
from app.errors import AuthenticationFailed, InsufficientPermissions

REALM = "pipeline-manager"
READ_METHODS = frozenset({"GET", "HEAD"})
HOW_TO_GET_A_KEY = (
    "create an API key with 'pipeline-manager api-keys create NAME --role read|write|admin'"
)

_READ, _WRITE, _ADMIN = Role.READ, Role.WRITE, Role.ADMIN
# The role each /v0 endpoint needs, by method (HEAD needs what GET does). A new
# route is added here; tests/test_roles.py walks the URL map and fails for any
# route and method left out, then checks each answer against this table.
ROUTE_ROLES: dict[str, dict[str, str]] = {
    "pipelines.Pipelines": {"GET": _READ, "POST": _WRITE},
    "pipelines.PipelineItem": {"GET": _READ, "PATCH": _WRITE, "DELETE": _WRITE},
    "pipelines.start": {"POST": _WRITE},
    "pipelines.stop": {"POST": _WRITE},
    "pipelines.pause": {"POST": _WRITE},
    "pipelines.resume": {"POST": _WRITE},
    "pipelines.restart": {"POST": _WRITE},
    "pipelines.Views": {"GET": _READ, "POST": _WRITE},
    "pipelines.delete_view": {"DELETE": _WRITE},
    "connectors.Connectors": {"GET": _READ, "POST": _WRITE},
    "connectors.ConnectorItem": {"GET": _READ, "DELETE": _WRITE},
    "connectors.pause": {"POST": _WRITE},
    "connectors.start": {"POST": _WRITE},
    "delivery.connector_stats": {"GET": _READ},
    "resets.issue_reset": {"POST": _WRITE},
    "resets.get_reset_status": {"GET": _READ},
    "resets.list_resets": {"GET": _READ},
    "resets.cancel_reset": {"POST": _WRITE},
    "view_data.push_changes": {"POST": _WRITE},
    # Managing credentials: a write credential must not mint or revoke keys.
    "api_keys.ApiKeys": {"GET": _ADMIN, "POST": _ADMIN},
    "api_keys.ApiKeyItem": {"GET": _ADMIN, "DELETE": _ADMIN},
    # Notification endpoints hold a signing secret and send the tenant's events out.
    "notifications.Notifications": {"GET": _ADMIN, "POST": _ADMIN},
    "notifications.NotificationItem": {"GET": _ADMIN, "DELETE": _ADMIN},
    "notifications.send_test": {"POST": _ADMIN},
    "notifications.list_deliveries": {"GET": _ADMIN},
}


def role_declared_in(
    table: Mapping[str, Mapping[str, str]], endpoint: str | None, method: str
) -> str | None:
    """The role a table of declared roles gives an endpoint and method (HEAD as GET), or None."""
    roles = table.get(endpoint or "", {})
    return roles.get("GET" if method == "HEAD" else method)


def role_needed_in(
    table: Mapping[str, Mapping[str, str]],
    endpoint: str | None,
    method: str,
    read_methods: frozenset[str] = READ_METHODS,
) -> str:
    """The declared role, else ``read`` for ``read_methods``, else ``write``."""
    declared = role_declared_in(table, endpoint, method)
    if declared is not None:
        return declared
    return Role.READ if method in read_methods else Role.WRITE


def declared_role(endpoint: str | None, method: str) -> str | None:
    """Return the role ``ROUTE_ROLES`` declares for an endpoint and method, or None."""
    return role_declared_in(ROUTE_ROLES, endpoint, method)


def required_role(endpoint: str | None, method: str) -> str:
    """Return the role a request needs: the declared one, else ``read`` to read, else ``write``."""
    return role_needed_in(ROUTE_ROLES, endpoint, method)


def _rejected(reason: str, message: str, error: str | None = "invalid_token", **details: Any):
    """Build the 401 answer; ``error`` is RFC 6750's code (None when no credential came)."""
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return AuthenticationFailed(
        message,
        details={"reason": reason, **details},
        headers={"WWW-Authenticate": challenge},
    )


def authenticate() -> Principal:
    """Return the principal of the request's bearer credential, or raise a 401."""
    header = request.headers.get("Authorization", "")
    if not header.strip():
        raise _rejected(
            "missing",
            f"Send 'Authorization: Bearer <API key or JWT>'; {HOW_TO_GET_A_KEY}",
            error=None,
        )
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _rejected(
            "wrong_scheme",
            f"Use the Bearer scheme: 'Authorization: Bearer <API key or JWT>', not '{scheme[:20]}'",
            error=None,
        )
    credential = credential.strip()
    if not credential:
        raise _rejected(
            "missing",
            "The Bearer credential is empty; send the API key or JWT after 'Bearer '",
            error="invalid_request",
        )
    if credential.startswith(KEY_PREFIX):
        return _authenticate_key(credential)
    verifier = current_app.extensions.get("jwt_verifier")
    if verifier is None:
        raise _rejected(
            "malformed", f"The credential is not an API key (they start with '{KEY_PREFIX}')"
        )
    try:
        return verifier.verify(credential)
    except JwtRejected as exc:
        raise _rejected(exc.reason, exc.message, **exc.details) from None


def _authenticate_key(key: str) -> Principal:
    """Check an API key; unknown and revoked keys get the same answer."""
    if not is_well_formed(key):
        raise _rejected(
            "malformed",
            f"The API key is malformed: it is '{KEY_PREFIX}' followed by 43 characters; "
            "copy it whole",
        )
    try:
        principal = principal_of_key(key)
    except KeyExpired as exc:
        raise _rejected(
            "expired",
            f"The API key expired at {exc.expires_at.isoformat(timespec='seconds')}; "
            "ask an admin for a new one",
            expired_at=exc.expires_at.isoformat(timespec="seconds"),
        ) from None
    if principal is None:
        raise _rejected(
            "invalid_key",
            f"The API key is not valid (it may have been revoked); {HOW_TO_GET_A_KEY}",
        )
    return principal


def check_request() -> None:
    """Authenticate and authorize a ``/v0`` request; set ``g.principal``."""
    path = request.path
    if not (path == "/v0" or path.startswith("/v0/")) or request.method == "OPTIONS":
        return
    principal = authenticate()
    g.principal = principal
    if request.routing_exception is not None:
        # No such route or method: let that 404/405 answer.
        return
    needed = required_role(request.endpoint, request.method)
    if not Role.allows(principal.role, needed):
        raise InsufficientPermissions(
            f"{request.method} needs the '{needed}' role here; these credentials have "
            f"'{principal.role}'. Use {'an' if needed == Role.ADMIN else 'a'} {needed} key.",
            details={"required_role": needed, "role": principal.role},
            headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'},
        )
