"""The ``http`` transport's defaults, limits and settings schema, without ``requests``.

The driver (:mod:`app.transports.http`) checks settings against these same
numbers, so the schema the OpenAPI document shows cannot drift from them.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 10.0
MAX_TIMEOUT = 300.0
MAX_RETRIES = 20
MAX_BACKOFF = 600.0


def config_schema() -> dict[str, Any]:
    """The settings' JSON schema (for the transport ``oneOf`` of the OpenAPI document)."""
    seconds = {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT}
    backoff = {"type": "number", "minimum": 0, "maximum": MAX_BACKOFF}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["url"],
        "properties": {
            "url": {
                "type": "string",
                "description": "http:// or https:// URL the batches are POSTed to.",
                "example": "http://127.0.0.1:9000/in",
            },
            "timeout": {
                "description": "Seconds to connect and to read the answer "
                f"(default {DEFAULT_CONNECT_TIMEOUT:g} and "
                f"{DEFAULT_READ_TIMEOUT:g}): one number for both, or each.",
                "oneOf": [
                    seconds,
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"connect": seconds, "read": seconds},
                    },
                ],
            },
            "max_retries": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_RETRIES,
                "description": f"Retries of a batch (default {DEFAULT_MAX_RETRIES}).",
            },
            "backoff": {
                "type": "object",
                "additionalProperties": False,
                "description": "Seconds between retries: doubled from base up to cap.",
                "properties": {"base": backoff, "cap": backoff},
            },
        },
    }
