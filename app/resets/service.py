"""Reset work on the request side: issuing resets and answering their status."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from app.connectors.service import get_connector
from app.database import utcnow
from app.errors import PipelineNotRunning, PipelineRestarted
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus
from app.resets.models import Reset, ResetStatus
from app.resets.tokens import invalid_token, reset_tokens


def _queued_reset(connector_id: int) -> Reset | None:
    return db.session.execute(
        sa.select(Reset).where(Reset.queued_connector_id == connector_id)
    ).scalar_one_or_none()


def request_reset(pipeline: Pipeline, view_name: str, connector_name: str) -> Reset:
    """Queue a reset of a connector, or return the one already queued for it."""
    connector = get_connector(pipeline, view_name, connector_name)
    if pipeline.status == PipelineStatus.STOPPED:
        raise PipelineNotRunning(
            pipeline.name, f"Pipeline '{pipeline.name}' is stopped; start it to reset a connector"
        )
    for _attempt in range(3):
        queued = _queued_reset(connector.id)
        if queued is not None:
            if queued.incarnation == pipeline.incarnation:
                return queued
            # A leftover of an ended incarnation: it will never run.
            abandon(queued, "The pipeline was restarted before the reset started")
        reset_id = uuid.uuid4()
        reset = Reset(
            id=reset_id,
            pipeline_id=pipeline.id,
            connector=connector,
            incarnation=pipeline.incarnation,
            queued_connector_id=connector.id,
            token=reset_tokens().issue(pipeline.id, pipeline.incarnation, reset_id),
        )
        try:
            db.session.add(reset)
            db.session.commit()
            return reset
        except IntegrityError:
            # Another request queued one first: answer with that one.
            db.session.rollback()
    queued = _queued_reset(connector.id)
    if queued is None:
        raise RuntimeError("could not queue a reset")
    return queued


def abandon(reset: Reset, why: str) -> None:
    """Mark a reset of an ended incarnation abandoned (if still in progress)."""
    db.session.execute(
        sa.update(Reset)
        .where(Reset.id == reset.id, Reset.status == ResetStatus.IN_PROGRESS)
        .values(
            status=ResetStatus.ABANDONED,
            queued_connector_id=None,
            completed_at=utcnow(),
            lease_owner=None,
            error=why,
        )
    )
    db.session.commit()


def reset_status(pipeline: Pipeline, token: str | None) -> Reset:
    """Return the reset a token names, if it belongs to the live incarnation.

    The checks run from what the token alone shows to what needs the
    database, and each failure has its own answer (see the contract's table).
    """
    claims = reset_tokens().read(token)
    if claims.pipeline_id != pipeline.id:
        raise invalid_token("wrong_pipeline", pipeline_name=pipeline.name)
    if claims.incarnation < 1 or claims.incarnation > pipeline.incarnation:
        raise invalid_token(
            "unknown_incarnation",
            token_incarnation=claims.incarnation,
            current_incarnation=pipeline.incarnation,
        )
    _require_live_incarnation(pipeline, claims.incarnation)
    reset = db.session.execute(
        sa.select(Reset).where(
            Reset.id == claims.reset_id,
            Reset.pipeline_id == pipeline.id,
            Reset.incarnation == claims.incarnation,
        )
    ).scalar_one_or_none()
    if reset is None:
        raise invalid_token("unknown_reset")
    if reset.status == ResetStatus.ABANDONED:
        # The incarnation ended between reading the pipeline and the reset
        # (each statement sees the latest commit): answer as of now.
        db.session.refresh(pipeline)
        _require_live_incarnation(pipeline, claims.incarnation)
        raise _restarted(pipeline, claims.incarnation)
    # The answer names the pipeline through connector.view; hand that the loaded
    # pipeline (the session holds it only weakly) rather than a fourth query.
    set_committed_value(reset.connector.view, "pipeline", pipeline)
    return reset


def _restarted(pipeline: Pipeline, token_incarnation: int) -> PipelineRestarted:
    return PipelineRestarted(
        f"Pipeline '{pipeline.name}' was restarted after this reset was issued; "
        "issue the reset again",
        details={
            "pipeline_name": pipeline.name,
            "token_incarnation": token_incarnation,
            "current_incarnation": pipeline.incarnation,
        },
    )


def _require_live_incarnation(pipeline: Pipeline, token_incarnation: int) -> None:
    """Raise unless the token's incarnation is the pipeline's live one."""
    if pipeline.status == PipelineStatus.STOPPED:
        raise PipelineNotRunning(
            pipeline.name,
            f"Pipeline '{pipeline.name}' is stopped; no live incarnation can answer",
        )
    if token_incarnation != pipeline.incarnation:
        raise _restarted(pipeline, token_incarnation)
