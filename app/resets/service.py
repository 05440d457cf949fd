"""Reset work on the request side: issuing resets and answering their status."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app import quotas
from app.connectors.models import Connector
from app.connectors.service import get_connector
from app.database import utcnow
from app.delivery import due
from app.errors import (
    InvalidResetToken,
    PipelineNotRunning,
    PipelineRestarted,
    UnknownPipelineName,
)
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus, View, is_valid_name
from app.pipelines.service import get_pipeline
from app.prepared import PreparedSelect
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
        quotas.check_queued_resets(pipeline.tenant)
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
            db.session.flush()
            due.mark_connector(connector.id)  # a worker takes it at once
            db.session.commit()
            return reset
        except IntegrityError:
            # Another request queued one first: answer with that one.
            db.session.rollback()
    queued = _queued_reset(connector.id)
    if queued is None:
        raise RuntimeError("could not queue a reset")
    return queued


def history(connector: Connector, limit: int, after: uuid.UUID | None = None) -> list[Reset]:
    """Return the connector's resets, newest first: at most ``limit``, older than ``after``.

    Pages are cut at the reset ``after`` (keyset on request time, then id), so
    a page costs the same however deep it is; an ``after`` that is not one of
    the connector's resets gives an empty page.
    """
    query = sa.select(Reset).where(Reset.connector_id == connector.id)
    if after is not None:
        mark = (
            sa.select(Reset.requested_at, Reset.id)
            .where(Reset.id == after, Reset.connector_id == connector.id)
            .subquery()
        )
        query = query.join(
            mark,
            sa.or_(
                Reset.requested_at < mark.c.requested_at,
                sa.and_(Reset.requested_at == mark.c.requested_at, Reset.id < mark.c.id),
            ),
        )
    query = query.order_by(Reset.requested_at.desc(), Reset.id.desc()).limit(limit)
    return list(db.session.execute(query).scalars())


def abandon(reset: Reset, why: str) -> None:
    """Mark a reset of an ended incarnation abandoned (if still in progress)."""
    ended = db.session.execute(
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
    if ended.rowcount:
        db.session.execute(
            sa.update(Connector)
            .where(Connector.id == reset.connector_id)
            .values(resets_abandoned=Connector.resets_abandoned + 1)
            .execution_options(synchronize_session=False)
        )
    db.session.commit()


# Incarnations are 32-bit integer columns.
MAX_INCARNATION = 2**31 - 1
_P, _R = Pipeline.__table__.c, Reset.__table__.c
_C, _V = Connector.__table__.c, View.__table__.c
# reset_status in one statement: the pipeline, and the reset the token names
# joined to it (NULLs when the pipeline never had that reset in that incarnation).
# Compiled once per dialect; each request binds values and reads one row.
_STATUS_QUERY = PreparedSelect(
    sa.select(
        _P.id.label("pipeline_id"),
        _P.name.label("pipeline_name"),
        _P.status.label("pipeline_status"),
        _P.incarnation.label("pipeline_incarnation"),
        _R.id.label("reset_id"),
        _R.status,
        _R.phase,
        _R.incarnation,
        _R.snapshot_records,
        _R.replayed_records,
        _R.requested_at,
        _R.started_at,
        _R.completed_at,
        _R.error,
        _R.origin,
        _R.attempts,
        _R.next_attempt_at,
        _V.name.label("view_name"),
        _C.name.label("connector_name"),
    )
    .select_from(
        Pipeline.__table__.outerjoin(
            Reset.__table__,
            sa.and_(
                _R.id == sa.bindparam("reset_id"),
                _R.pipeline_id == _P.id,
                _R.incarnation == sa.bindparam("incarnation"),
            ),
        )
        .outerjoin(Connector.__table__, _C.id == _R.connector_id)
        .outerjoin(View.__table__, _V.id == _C.view_id)
    )
    .where(_P.tenant == sa.bindparam("tenant"), _P.name == sa.bindparam("name"))
)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def reset_status(tenant: str, pipeline_name: str, token: str | None) -> dict[str, Any]:
    """Return the progress of the reset a token names, in the API's shape (``ResetStatusOut``).

    The reset must belong to the live incarnation of the tenant's pipeline.
    The checks run from what the token alone shows to what needs the
    database, and each failure has its own answer (see the contract's table);
    an unknown pipeline answers 404 before anything is said about the token.
    The answer takes one statement (the pipeline joined to the reset); it is
    built here rather than by the schema because this is the route pollers
    hit, and tests/test_reset_status.py checks it against ``ResetStatusOut``.
    """
    if not is_valid_name(pipeline_name):  # names no pipeline; never sent to the database
        raise UnknownPipelineName(pipeline_name)
    try:
        claims = reset_tokens().read(token)
    except InvalidResetToken:
        get_pipeline(tenant, pipeline_name)  # 404 first
        raise
    params = {
        "tenant": tenant,
        "name": pipeline_name,
        "reset_id": claims.reset_id,
        # A signed incarnation outside the column's range names no reset (and is
        # answered unknown_incarnation below); 0 matches none and binds everywhere.
        "incarnation": claims.incarnation if 0 < claims.incarnation <= MAX_INCARNATION else 0,
    }
    # On a pooled connection of its own (see app/prepared.py): one statement
    # needs no unit of work, and the pool's rollback on return ends it.
    row = _STATUS_QUERY.first(db.engine, params)
    if row is None:
        raise UnknownPipelineName(pipeline_name)
    # Unpacked by position (in _STATUS_QUERY's order): far cheaper than by name.
    (
        pipeline_id,
        name,
        pipeline_status,
        pipeline_incarnation,
        reset_id,
        status,
        phase,
        incarnation,
        snapshot_records,
        replayed_records,
        requested_at,
        started_at,
        completed_at,
        error,
        origin,
        attempts,
        next_attempt_at,
        view_name,
        connector_name,
    ) = row
    if claims.pipeline_id != pipeline_id:
        raise invalid_token("wrong_pipeline", pipeline_name=pipeline_name)
    if claims.incarnation < 1 or claims.incarnation > pipeline_incarnation:
        raise invalid_token(
            "unknown_incarnation",
            token_incarnation=claims.incarnation,
            current_incarnation=pipeline_incarnation,
        )
    _require_live_incarnation(name, pipeline_status, pipeline_incarnation, claims.incarnation)
    if reset_id is None:
        raise invalid_token("unknown_reset")
    if status == ResetStatus.ABANDONED:
        # The incarnation ended between the pipeline's row and the reset's being
        # read: answer as of now.
        pipeline = get_pipeline(tenant, pipeline_name)
        _require_live_incarnation(
            pipeline.name, pipeline.status, pipeline.incarnation, claims.incarnation
        )
        raise _restarted(pipeline.name, claims.incarnation, pipeline.incarnation)
    return {
        "reset_id": str(reset_id),
        "status": status,
        "phase": phase,
        "pipeline_name": name,
        "view_name": view_name,
        "connector_name": connector_name,
        "incarnation": incarnation,
        "snapshot_records": snapshot_records,
        "replayed_records": replayed_records,
        "requested_at": requested_at.isoformat(),
        "started_at": _iso(started_at),
        "completed_at": _iso(completed_at),
        "error": error,
        "origin": origin,
        "attempts": attempts,
        "next_attempt_at": _iso(next_attempt_at),
    }


def _restarted(pipeline_name: str, token_incarnation: int, current: int) -> PipelineRestarted:
    return PipelineRestarted(
        f"Pipeline '{pipeline_name}' was restarted after this reset was issued; "
        "issue the reset again",
        details={
            "pipeline_name": pipeline_name,
            "token_incarnation": token_incarnation,
            "current_incarnation": current,
        },
    )


def _require_live_incarnation(
    pipeline_name: str, status: str, incarnation: int, token_incarnation: int
) -> None:
    """Raise unless the token's incarnation is the pipeline's live one."""
    if status == PipelineStatus.STOPPED:
        raise PipelineNotRunning(
            pipeline_name,
            f"Pipeline '{pipeline_name}' is stopped; no live incarnation can answer",
        )
    if token_incarnation != incarnation:
        raise _restarted(pipeline_name, token_incarnation, incarnation)
