"""The bearer security scheme in the OpenAPI document.

Every ``/v0`` operation is marked as needing it and documents its 401
answer, through an apispec plugin, so a route added later is documented as
secured without anyone remembering to. 403 is documented where the role the
guard declares for the route (``guard.required_role``) is above ``read``:
every valid credential reads, so a read route never answers 403.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from apispec import APISpec, BasePlugin

from app.auth.guard import required_role
from app.auth.models import Role

SCHEME_NAME = "bearerAuth"
SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key ('apikey:...', from 'pipeline-manager api-keys create') or a JWT.",
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
UNAUTHORIZED = {
    "description": "AuthenticationFailed: no, malformed, unknown, revoked or expired "
    "credentials (see the WWW-Authenticate header)",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    "content": _ERROR_CONTENT,
}
_METHODS = {"get", "head", "post", "put", "patch", "delete"}


class BearerAuthPlugin(BasePlugin):
    """Marks ``/v0`` operations as secured by the bearer scheme."""

    def operation_helper(
        self, path: str | None = None, operations: dict | None = None, **kwargs: Any
    ) -> None:
        """Add the security requirement and the 401/403 answers to ``/v0`` operations.

        flask-smorest passes the Flask ``rule``, whose endpoint names the route
        in the guard's table.
        """
        if not path or not (path == "/v0" or path.startswith("/v0/")):
            return
        rule = kwargs.get("rule")
        endpoint = getattr(rule, "endpoint", None)
        for method, operation in (operations or {}).items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            operation.setdefault("security", [{SCHEME_NAME: []}])
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", deepcopy(UNAUTHORIZED))
            needed = required_role(endpoint, method.upper())
            if needed != Role.READ:
                responses.setdefault("403", forbidden(needed))


def forbidden(role: str) -> dict[str, Any]:
    """The 403 answer of an operation that needs ``role``."""
    return {
        "description": f"InsufficientPermissions: this needs a key or token with the '{role}' "
        "role (or above)",
        "content": deepcopy(_ERROR_CONTENT),
    }


def install(spec: APISpec) -> None:
    """Declare the scheme and mark the operations registered from now on."""
    spec.components.security_scheme(SCHEME_NAME, SCHEME)
    plugin = BearerAuthPlugin()
    plugin.init_spec(spec)
    spec.plugins = [*spec.plugins, plugin]
