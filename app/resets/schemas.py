"""Response shapes of resets."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.resets.models import ResetOrigin, ResetPhase, ResetStatus
from app.schemas import PageQuery

SERVED_STATUSES = [
    ResetStatus.IN_PROGRESS,
    ResetStatus.COMPLETE,
    ResetStatus.FAILED,
    ResetStatus.CANCELLED,
]


class PhaseOut(ma.Schema):
    """One phase a reset went through."""

    name = ma.fields.String(
        required=True,
        validate=validate.OneOf(ResetPhase.ALL),
        metadata={"enum": list(ResetPhase.ALL)},
    )
    # Kept as ISO 8601 texts (UTC) in the reset's row, and shown as they are.
    started_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    ended_at = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"format": "date-time", "description": "null while it goes on."},
    )


class ResetStatusQuery(ma.Schema):
    """Query of ``GET .../reset_status``."""

    class Meta:
        unknown = ma.EXCLUDE

    # Not marked required: a missing token answers InvalidResetToken, reason "missing".
    token = ma.fields.String(
        validate=validate.Length(min=1),
        metadata={
            "description": "The reset token returned by the output connector reset endpoint "
            "(`token` in the answer of Reset Output Connector)."
        },
    )


class ResetStatusOut(ma.Schema):
    """Progress of a reset."""

    reset_id = ma.fields.UUID(required=True, attribute="id")
    status = ma.fields.String(
        required=True, validate=validate.OneOf(SERVED_STATUSES), metadata={"enum": SERVED_STATUSES}
    )
    phase = ma.fields.String(
        required=True,
        validate=validate.OneOf(ResetPhase.ALL),
        metadata={"enum": list(ResetPhase.ALL)},
    )
    pipeline_name = ma.fields.String(required=True, attribute="connector.view.pipeline.name")
    view_name = ma.fields.String(required=True, attribute="connector.view.name")
    connector_name = ma.fields.String(required=True, attribute="connector.name")
    incarnation = ma.fields.Integer(required=True)
    snapshot_records = ma.fields.Integer(required=True)
    replayed_records = ma.fields.Integer(required=True)
    requested_at = ma.fields.AwareDateTime(required=True)
    started_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    completed_at = ma.fields.AwareDateTime(required=True, allow_none=True)
    error = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Why the reset failed; while it is in progress, why its last "
            "attempt failed (it is retried at next_attempt_at), or why it was redone."
        },
    )
    origin = ma.fields.String(
        required=True,
        validate=validate.OneOf(ResetOrigin.ALL),
        metadata={
            "enum": list(ResetOrigin.ALL),
            "description": "request: an operator asked; redo: the service redoes a snapshot "
            "the sink still owes (a reset cut short by a stop, a damaged sink file).",
        },
    )
    attempts = ma.fields.Integer(
        required=True, metadata={"description": "Attempts started so far (RESET_MAX_ATTEMPTS)."}
    )
    next_attempt_at = ma.fields.AwareDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "After a failed attempt: when the next one may start."},
    )
    rate_records_per_second = ma.fields.Float(
        required=True,
        allow_none=True,
        dump_default=None,  # a reset row (history, a new reset) has no rate of its own
        metadata={
            "description": "While the snapshot replays: records per second over the last "
            "seconds (null otherwise, or while too little is known)."
        },
    )
    eta_seconds = ma.fields.Float(
        required=True,
        allow_none=True,
        dump_default=None,
        metadata={"description": "Seconds left at that rate (null while unknown)."},
    )
    phases = ma.fields.List(
        ma.fields.Nested(PhaseOut),
        required=True,
        metadata={
            "description": "Each phase the reset went through, in order, with when it started "
            "and ended (a retried attempt goes through them again)."
        },
    )

    @ma.post_dump
    def _no_null_phases(self, data: dict, **_kwargs: object) -> dict:
        """A reset not started yet has recorded no phase: an empty list, never null."""
        if data.get("phases") is None:
            data["phases"] = []
        return data


class ResetHistoryItem(ResetStatusOut):
    """One reset of a connector's history (its token is not shown again)."""

    status = ma.fields.String(
        required=True,
        validate=validate.OneOf(ResetStatus.ALL),
        metadata={
            "enum": list(ResetStatus.ALL),
            "description": "abandoned: the pipeline stopped or restarted before it completed; "
            "cancelled: cancelled before it changed the sink.",
        },
    )


class ResetHistoryQuery(PageQuery):
    """Query of ``GET .../connectors/{connector_name}/resets``."""

    after = ma.fields.UUID(
        metadata={"description": "List the resets older than this one (the previous page's last)."}
    )


class ResetIssued(ResetStatusOut):
    """Answer to a reset request: the token and where to poll it."""

    token = ma.fields.String(required=True)
    status_url = ma.fields.String(required=True)


class ResetRequestQuery(ma.Schema):
    """Query of ``POST .../connectors/{connector_name}/reset``."""

    dry_run = ma.fields.Boolean(
        load_default=False,
        metadata={
            "description": "true: change nothing, answer 200 with what a reset would do now."
        },
    )


class LiveResetOut(ma.Schema):
    """The reset of the connector already queued or running."""

    reset_id = ma.fields.String(required=True, metadata={"format": "uuid"})
    status = ma.fields.String(required=True, metadata={"enum": [ResetStatus.IN_PROGRESS]})
    phase = ma.fields.String(
        required=True,
        validate=validate.OneOf(ResetPhase.ALL),
        metadata={"enum": list(ResetPhase.ALL)},
    )
    requested_at = ma.fields.String(required=True, metadata={"format": "date-time"})
    status_url = ma.fields.String(required=True)
    cancellable = ma.fields.Boolean(required=True)


class ResetPreview(ma.Schema):
    """What a reset of the connector would do now (``dry_run=true``); nothing was changed."""

    pipeline_name = ma.fields.String(required=True)
    view_name = ma.fields.String(required=True)
    connector_name = ma.fields.String(required=True)
    transport = ma.fields.String(required=True)
    action = ma.fields.String(
        required=True,
        metadata={
            "enum": ["queue", "attach"],
            "description": "queue: a new reset would be queued; attach: the request would be "
            "answered with the reset already queued or running (reset_in_progress).",
        },
    )
    switch = ma.fields.String(
        required=True,
        metadata={
            "enum": ["atomic", "in_place"],
            "description": "atomic: readers see the old contents until the whole snapshot "
            "is switched in at once; in_place: the sink is told to reset, then refilled.",
        },
    )
    readers_see = ma.fields.String(
        required=True, metadata={"description": "What the sink's readers see, in words."}
    )
    cancellable_until = ma.fields.String(
        required=True,
        metadata={
            "enum": ["switch", "start"],
            "description": "Until when such a reset can be cancelled: until its staged copy "
            "is switched in, or only until it starts.",
        },
    )
    snapshot_records = ma.fields.Integer(
        required=True, metadata={"description": "Records the snapshot would replay now."}
    )
    log_position = ma.fields.Integer(
        required=True, metadata={"description": "Where the view's change log ends now."}
    )
    connector_sync_state = ma.fields.String(required=True)
    reset_in_progress = ma.fields.Nested(LiveResetOut, required=True, allow_none=True)
