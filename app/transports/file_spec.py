"""The ``file`` transport's settings schema, readable without loading its driver."""

from __future__ import annotations

from typing import Any


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
                "description": "The sink file, relative to the tenant's sink folder.",
                "example": "out/totals.jsonl",
            }
        },
    }
