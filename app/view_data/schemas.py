"""Response shapes of view data."""

from __future__ import annotations

import marshmallow as ma


class ChangesAccepted(ma.Schema):
    """Answer to a stored batch of view changes."""

    records = ma.fields.Integer(required=True, metadata={"description": "Changes in the batch."})
    inserts = ma.fields.Integer(required=True)
    deletes = ma.fields.Integer(required=True)
    first_seq = ma.fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "Log position of the batch's first change (null if empty)."},
    )
    last_seq = ma.fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "Log position of the batch's last change (null if empty)."},
    )
    log_end = ma.fields.Integer(
        required=True, metadata={"description": "The view's change log now ends here."}
    )


CHANGES_BODY = {
    "required": True,
    "description": 'A batch of changes in Feldera\'s JSON format: `[{"insert": {...}}, '
    '{"delete": {...}}]`, or one change per line with `Content-Type: application/x-ndjson` '
    "(or `application/jsonl`). Applied in order and stored atomically.",
    "content": {
        "application/json": {
            "schema": {
                "type": "array",
                "items": {
                    "type": "object",
                    "description": 'One change: `{"insert": {...}}` or `{"delete": {...}}`.',
                    "properties": {"insert": {"type": "object"}, "delete": {"type": "object"}},
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": False,
                },
            },
            # Valid on a fresh view: a delete must name a record the view holds.
            "example": [{"insert": {"id": 1, "total": 10}}, {"insert": {"id": 2, "total": 5}}],
        },
        # Newline-delimited JSON, one change per line (both names are accepted).
        "application/x-ndjson": {
            "schema": {"type": "string", "format": "binary"},
            "example": '{"insert": {"id": 1, "total": 10}}\n{"insert": {"id": 2, "total": 5}}\n',
        },
        "application/jsonl": {
            "schema": {"type": "string", "format": "binary"},
            "example": '{"insert": {"id": 1, "total": 10}}\n{"insert": {"id": 2, "total": 5}}\n',
        },
    },
}
