"""Request and response shapes of API keys."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.auth.models import Role
from app.pipelines.schemas import name_field
from app.schemas import PageQuery


class ApiKeyCreate(ma.Schema):
    """Body of ``POST /v0/api_keys``."""

    class Meta:
        unknown = ma.RAISE

    name = name_field(required=True, metadata={"example": "ci-reader"})
    role = ma.fields.String(
        load_default=Role.READ,
        validate=validate.OneOf(Role.ALL),
        metadata={
            "enum": list(Role.ALL),
            "description": "'read' may only read; 'write' may also change pipelines; 'admin' "
            "may also manage API keys. No higher than the caller's own role.",
        },
    )
    expires_at = ma.fields.AwareDateTime(
        load_default=None,
        allow_none=True,
        metadata={
            "description": "When the key stops working (in the future, and no later than the "
            "caller's own credential expires); omitted: the caller's expiry, or never.",
            "example": "2030-01-01T00:00:00+00:00",
        },
    )


class ApiKeyOut(ma.Schema):
    """An API key as the API shows it: never the key itself."""

    name = ma.fields.String(required=True)
    tenant = ma.fields.String(required=True)
    role = ma.fields.String(required=True, metadata={"enum": list(Role.ALL)})
    prefix = ma.fields.String(
        required=True,
        metadata={"description": "The key's first characters, to tell keys apart."},
    )
    created_at = ma.fields.AwareDateTime(required=True)
    expires_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When the key stops working; null if never."},
    )
    last_used_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "Last authenticated use, to the minute; null if never."},
    )


class ApiKeyCreated(ApiKeyOut):
    """A new API key, with the key itself: it is shown this once."""

    # Not required: a replay of the request (same Idempotency-Key) answers
    # without it, since the key itself is never stored.
    key = ma.fields.String(
        metadata={
            "description": "The key; send it as 'Authorization: Bearer <key>'. Shown once: "
            "absent from the replayed answer of a retry with the same Idempotency-Key."
        },
    )


class ApiKeyListQuery(PageQuery):
    """Query of ``GET /v0/api_keys``: a page of the tenant's keys, by name."""

    after = name_field(
        metadata={"description": "List the keys named after this one (the previous page's last)."}
    )
