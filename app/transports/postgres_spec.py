"""The ``postgres`` transport's names, limits, grants and settings schema, without psycopg.

The app checks ``POSTGRES_SINK_DSN_TENANTS`` (:func:`dsn_grants`) when it is
built, and the OpenAPI document shows the schema, both without loading the
driver (:mod:`app.transports.postgres`), which checks settings against these.
"""

from __future__ import annotations

import re
from typing import Any

MODES = ("rows", "jsonb")
MAX_KEY_COLUMNS = 32
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def dsn_grants(config: Any) -> dict[str, frozenset[str]] | None:
    """``POSTGRES_SINK_DSN_TENANTS`` as variable -> tenants ("*": all); None when not set.

    Raises ``ValueError`` when the setting is not such a mapping (checked when
    the app is built, so a typo stops the service rather than opening it up).
    """
    value = config.get("POSTGRES_SINK_DSN_TENANTS")
    if not value:
        return None
    if not isinstance(value, dict):
        raise ValueError("POSTGRES_SINK_DSN_TENANTS must map variable names to lists of tenants")
    grants: dict[str, frozenset[str]] = {}
    for name, tenants in value.items():
        if isinstance(tenants, str):
            tenants = tenants.replace(",", " ").split()
        if not isinstance(tenants, list | tuple) or not all(isinstance(t, str) for t in tenants):
            raise ValueError(f"POSTGRES_SINK_DSN_TENANTS[{name!r}] must be a list of tenant names")
        grants[str(name)] = frozenset(tenants)
    return grants


def config_schema() -> dict[str, Any]:
    """The settings' JSON schema (for the transport ``oneOf`` of the OpenAPI document)."""
    identifier = {"type": "string", "pattern": IDENTIFIER.pattern}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["dsn_env", "table"],
        "properties": {
            "dsn_env": {
                "type": "string",
                "description": "An environment variable of the server that holds the sink "
                "database's DSN; its name starts with SINK_DSN_ (POSTGRES_SINK_DSN_PREFIX).",
                "example": "SINK_DSN_WAREHOUSE",
            },
            "table": {
                "type": "string",
                "pattern": r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$",
                "description": "The table, name or schema.name (taken as written).",
                "example": "analytics.orders",
            },
            "key": {
                "type": "array",
                "items": identifier,
                "minItems": 1,
                "maxItems": MAX_KEY_COLUMNS,
                "uniqueItems": True,
                "description": "Columns that identify a record (mode rows): an insert "
                "replaces the row with its key (needs a unique index on them).",
            },
            "mode": {
                "type": "string",
                "enum": list(MODES),
                "default": "rows",
                "description": "rows: one column per top-level field; jsonb: one "
                "'record jsonb' column.",
            },
        },
    }
