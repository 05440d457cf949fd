"""Response shapes of delivery statistics."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.connectors.models import SyncState
from app.connectors.schemas import TransportOut
from app.delivery.service import Health
from app.resets.models import ResetOrigin, ResetPhase, ResetStatus


class ResetsStats(ma.Schema):
    """A connector's resets."""

    count = ma.fields.Integer(required=True, metadata={"description": "Resets ever requested."})
    completed = ma.fields.Integer(required=True, metadata={"description": "Resets completed."})
    failed = ma.fields.Integer(required=True, metadata={"description": "Resets failed."})
    cancelled = ma.fields.Integer(required=True, metadata={"description": "Resets cancelled."})
    abandoned = ma.fields.Integer(
        required=True,
        metadata={"description": "Resets abandoned (the pipeline stopped before they ended)."},
    )
    # null is one of the values (never reset): an enum without it makes strict
    # clients refuse the answer.
    last_status = ma.fields.String(
        required=True, allow_none=True, metadata={"enum": [*ResetStatus.ALL, None]}
    )
    last_phase = ma.fields.String(
        required=True, allow_none=True, metadata={"enum": [*ResetPhase.ALL, None]}
    )
    last_requested_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    last_completed_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    last_origin = ma.fields.String(
        required=True, allow_none=True, metadata={"enum": [*ResetOrigin.ALL, None]}
    )
    last_attempts = ma.fields.Integer(required=True, allow_none=True)
    last_error = ma.fields.String(required=True, allow_none=True)


class ConnectorStats(ma.Schema):
    """What a connector delivered, what waits, its errors and its resets."""

    pipeline_name = ma.fields.String(required=True)
    view_name = ma.fields.String(required=True)
    connector_name = ma.fields.String(required=True)
    # The same shape as in connector answers (settings' secrets shown as ***).
    transport = ma.fields.Nested(TransportOut, required=True)
    health = ma.fields.String(
        required=True,
        validate=validate.OneOf(Health.ALL),
        metadata={
            "enum": list(Health.ALL),
            "description": "stopped with the pipeline; paused with it or on its own; "
            "resetting while the sink owes a snapshot; failed when delivery gave up (see "
            "sync_reason); failing while the last delivery attempt failed; healthy otherwise.",
        },
    )
    paused = ma.fields.Boolean(
        required=True,
        metadata={"description": "Paused by an operator (POST .../pause): it streams nothing."},
    )
    sync_state = ma.fields.String(
        required=True,
        validate=validate.OneOf(SyncState.ALL),
        metadata={
            "enum": list(SyncState.ALL),
            "description": "in_sync: the sink holds the view up to delivered_seq. resetting: "
            "a full snapshot is owed (a reset is queued, under way or being redone); nothing "
            "streams meanwhile. failed: given up (a batch the sink refused, or a reset out of "
            "attempts); a reset brings it back.",
        },
    )
    sync_reason = ma.fields.String(
        required=True, allow_none=True, metadata={"description": "Why it is not in sync."}
    )
    epoch = ma.fields.Integer(
        required=True,
        metadata={
            "description": "Fencing epoch of the connector's lease (grows at each takeover)."
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
    lease_takeovers = ma.fields.Integer(
        required=True,
        metadata={
            "description": "Times a worker took this connector over from one that let its "
            "lease run out (died or stalled)."
        },
    )
    last_delivered_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When the last batch was delivered (the last success)."},
    )
    next_attempt_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "While failing: when delivery is tried again (backoff)."},
    )
    sink_version = ma.fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "Table sinks: the sink's commit after the last batch or reset "
            "(the Delta table's version; the PostgreSQL transaction id). Null for other sinks."
        },
    )
    resets = ma.fields.Nested(ResetsStats, required=True)
