"""Response shapes of delivery statistics."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.delivery.service import Health
from app.resets.models import ResetPhase, ResetStatus


class ResetsStats(ma.Schema):
    """A connector's resets."""

    count = ma.fields.Integer(required=True, metadata={"description": "Resets ever requested."})
    completed = ma.fields.Integer(required=True, metadata={"description": "Resets completed."})
    last_status = ma.fields.String(
        required=True, allow_none=True, metadata={"enum": list(ResetStatus.ALL)}
    )
    last_phase = ma.fields.String(
        required=True, allow_none=True, metadata={"enum": list(ResetPhase.ALL)}
    )
    last_requested_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    last_completed_at = ma.fields.AwareDateTime(required=True, allow_none=True)


class ConnectorStats(ma.Schema):
    """What a connector delivered, what waits, its errors and its resets."""

    pipeline_name = ma.fields.String(required=True)
    view_name = ma.fields.String(required=True)
    connector_name = ma.fields.String(required=True)
    transport = ma.fields.String(required=True)
    health = ma.fields.String(
        required=True,
        validate=validate.OneOf(Health.ALL),
        metadata={
            "enum": list(Health.ALL),
            "description": "stopped/paused with the pipeline; failing while the last "
            "delivery attempt failed; healthy otherwise.",
        },
    )
    transmitted_records = ma.fields.Integer(
        required=True, metadata={"description": "Changes sent to the sink, replays included."}
    )
    transmitted_bytes = ma.fields.Integer(
        required=True, metadata={"description": "Bytes sent (file: JSON lines; http: bodies)."}
    )
    queued_records = ma.fields.Integer(
        required=True, metadata={"description": "Changes in the view's log not yet delivered."}
    )
    delivered_seq = ma.fields.Integer(
        required=True, metadata={"description": "Log position the sink has reached."}
    )
    log_end = ma.fields.Integer(required=True, metadata={"description": "The log's last position."})
    transport_errors = ma.fields.Integer(
        required=True,
        metadata={"description": "Failed deliveries (after the transport's retries)."},
    )
    consecutive_failures = ma.fields.Integer(required=True)
    last_error = ma.fields.String(required=True, allow_none=True)
    last_error_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    next_attempt_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "While failing: when delivery is tried again (backoff)."},
    )
    resets = ma.fields.Nested(ResetsStats, required=True)
