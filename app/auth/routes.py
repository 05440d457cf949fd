"""HTTP routes of API keys: an admin of a tenant manages its keys (see guard.ROUTE_ROLES)."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from app import idempotency
from app.auth import current_principal, current_tenant, service
from app.auth.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyListQuery, ApiKeyOut
from app.schemas import LINK_HEADER_DOC, documents_errors, page_headers
from app.web import Blueprint

blp = Blueprint(
    "api_keys",
    __name__,
    url_prefix="/v0/api_keys",
    description="API keys of the caller's tenant; 'admin' role only. A key is shown once, "
    "when it is created, and never outranks or outlives the credential that created it.",
)


@blp.route("")
class ApiKeys(MethodView):
    """The caller's tenant's API keys."""

    @blp.arguments(ApiKeyListQuery, location="query", as_kwargs=True, unknown=ma.RAISE)
    @blp.response(200, ApiKeyOut(many=True), headers=LINK_HEADER_DOC)
    def get(self, limit, after=None):
        """List API keys

        By name, at most `limit` per page; the `Link` header points at the next page.
        """
        found = service.list_keys(current_tenant(), limit + 1, after)
        page = found[:limit]
        cursor = page[-1].name if len(found) > limit else None
        return page, 200, page_headers(cursor, limit)

    @idempotency.idempotent(blp, secret_fields=("key",))
    @blp.arguments(ApiKeyCreate)
    @blp.response(201, ApiKeyCreated)
    @documents_errors(
        blp,
        {
            403: "InsufficientPermissions: the credentials are not 'admin', or the key "
            "would outrank or outlive them",
            409: "An API key of that name exists",
        },
    )
    def post(self, body):
        """Create an API key

        The response holds the key itself; it is never shown again. The key's
        role and expiry are bounded by the caller's (403 beyond them).
        """
        principal = current_principal()
        api_key, secret = service.create_key(
            principal.tenant, body["name"], body["role"], body["expires_at"], creator=principal
        )
        api_key.key = secret
        headers = {"Location": f"/v0/api_keys/{api_key.name}", "Cache-Control": "no-store"}
        return api_key, 201, headers


@blp.route("/<api_key_name>")
class ApiKeyItem(MethodView):
    """One API key."""

    @blp.response(200, ApiKeyOut)
    @documents_errors(blp, {404: "Unknown API key"})
    def get(self, api_key_name):
        """Get an API key (without the key itself)"""
        return service.get_key(current_tenant(), api_key_name)

    @blp.response(204)
    @documents_errors(blp, {404: "Unknown API key"})
    def delete(self, api_key_name):
        """Revoke an API key

        This process stops accepting the key at once, every other serving
        process within API_KEY_CACHE_SECONDS (2 seconds by default).
        """
        service.revoke_key(current_tenant(), api_key_name)
