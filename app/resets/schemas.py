"""Response shapes of resets."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.resets.models import ResetOrigin, ResetPhase, ResetStatus
from app.schemas import PageQuery

SERVED_STATUSES = [ResetStatus.IN_PROGRESS, ResetStatus.COMPLETE, ResetStatus.FAILED]


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


class ResetHistoryItem(ResetStatusOut):
    """One reset of a connector's history (its token is not shown again)."""

    status = ma.fields.String(
        required=True,
        validate=validate.OneOf(ResetStatus.ALL),
        metadata={
            "enum": list(ResetStatus.ALL),
            "description": "abandoned: the pipeline stopped or restarted before it completed.",
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
