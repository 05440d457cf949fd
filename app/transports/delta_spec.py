"""The ``delta`` transport's modes, column types and settings schema, without deltalake or pyarrow.

The OpenAPI document shows the schema without loading the driver
(:mod:`app.transports.delta`), which checks settings against these.
"""

from __future__ import annotations

import re
from typing import Any

MODES = ("changes", "rows")
SETTINGS = ("path", "mode", "columns", "key")
# Delta's primitive types a connector may declare, by their Delta names.
TYPES = (
    "string",
    "long",
    "integer",
    "short",
    "byte",
    "double",
    "float",
    "boolean",
    "timestamp",
    "date",
    "binary",
)
# decimal(precision, scale): precision 1 to 38, scale 0 to precision.
DECIMAL = re.compile(r"^decimal\((\d{1,2}), ?(\d{1,2})\)$")
MAX_DECIMAL_PRECISION = 38
TYPE_PATTERN = "^(" + "|".join(TYPES) + r"|decimal\(\d{1,2}, ?\d{1,2}\))$"
# A column name: a record's field, usable unquoted in Delta, Spark and DuckDB SQL.
COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_COLUMNS = 1000
MAX_KEY_COLUMNS = 32
# The columns a change table (mode changes) adds beside the declared ones.
CHANGE_COLUMNS = ("seq", "op")


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
                    "changes: an append-only table of changes (seq, op, then the declared "
                    "columns, or a JSON 'record' column when none are declared); a delete is "
                    "a row with op 'delete'. rows: the table equals the view, one row per "
                    "record (needs columns and key); each batch is one MERGE on the key."
                ),
            },
            "columns": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_COLUMNS,
                "additionalProperties": {"type": "string", "pattern": TYPE_PATTERN},
                "description": (
                    "The table's columns, one per top-level field of a record, name -> "
                    "Delta primitive type (string, long, integer, short, byte, double, "
                    "float, boolean, timestamp, date, binary, decimal(p,s)). Names are "
                    "letters, digits and _ (not starting with a digit; at most 128)."
                ),
                "example": {"id": "long", "name": "string", "total": "double"},
            },
            "key": {
                "type": "array",
                "items": {"type": "string", "pattern": COLUMN.pattern},
                "minItems": 1,
                "maxItems": MAX_KEY_COLUMNS,
                "uniqueItems": True,
                "description": (
                    "Mode rows (required there): the declared columns that identify a "
                    "record. An insert replaces the row with its key; a delete removes it "
                    "if it still equals the record."
                ),
                "example": ["id"],
            },
        },
    }
