"""The ``delta`` transport's modes and settings schema, without deltalake or pyarrow."""

from __future__ import annotations

from typing import Any

MODES = ("changes",)
SETTINGS = ("path", "mode")


def config_schema() -> dict[str, Any]:
    """The settings' JSON schema (for the transport ``oneOf`` of the OpenAPI document)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": (
                    "The table's folder, inside the tenant's sink folder (a relative "
                    "path is taken from it). Created on the first write if missing."
                ),
                "example": "tables/orders",
            },
            "mode": {
                "type": "string",
                "enum": list(MODES),
                "default": "changes",
                "description": (
                    "changes: an append-only table of changes (seq, op, record); "
                    "a delete is a row with op 'delete'."
                ),
            },
        },
    }
