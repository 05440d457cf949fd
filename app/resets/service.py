"""Reset work on the request side: issuing resets and answering their status."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app import quotas
from app.connectors.models import Connector, SyncState
from app.connectors.service import get_connector
from app.database import read_db_time, utcnow
from app.delivery import due
from app.errors import (
    InvalidResetToken,
    PipelineNotRunning,
    PipelineRestarted,
    ResetNotCancellable,
    UnknownPipelineName,
)
from app.extensions import db
from app.notifications import events
from app.notifications.models import EventType
from app.pipelines.models import Pipeline, PipelineStatus, View, is_valid_name
from app.pipelines.service import get_pipeline
from app.prepared import PreparedSelect
from app.resets.models import Reset, ResetOrigin, ResetPhase, ResetStatus, state_given_back
from app.resets.tokens import invalid_token, reset_tokens


def _queued_reset(connector_id: int) -> Reset | None:
    return db.session.execute(
        sa.select(Reset).where(Reset.queued_connector_id == connector_id)
    ).scalar_one_or_none()


def _live_reset(connector_id: int, incarnation: int) -> Reset | None:
    """The connector's oldest reset still in progress in this incarnation (queued or running)."""
    return db.session.execute(
        sa.select(Reset)
        .where(
            Reset.connector_id == connector_id,
            Reset.status == ResetStatus.IN_PROGRESS,
            Reset.incarnation == incarnation,
        )
        .order_by(Reset.requested_at, Reset.id)
        .limit(1)
    ).scalar_one_or_none()


def request_reset(pipeline: Pipeline, view_name: str, connector_name: str) -> Reset:
    """Queue a reset of a connector, or return the one of it still queued or running.

    A second request while a reset is under way is answered with that reset
    (its token): the caller follows the job there is rather than queueing
    another snapshot of the same view behind it.
    """
    connector = get_connector(pipeline, view_name, connector_name)
    if pipeline.status == PipelineStatus.STOPPED:
        raise PipelineNotRunning(
            pipeline.name, f"Pipeline '{pipeline.name}' is stopped; start it to reset a connector"
        )
    running = _live_reset(connector.id, pipeline.incarnation)
    if running is not None:
        return running
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


_READERS_SEE = {
    "file": "The file keeps its contents until the whole snapshot is written beside it, "
    "then one rename replaces it.",
    "postgres": "The table keeps its rows until the whole snapshot is in a staging table, "
    "then one transaction switches it in.",
    "delta": "The table keeps its version until the whole snapshot is staged, "
    "then one commit replaces its contents.",
    "http": "The receiver gets a reset message, then the snapshot in batches: "
    "it sees its data emptied, then refilled.",
}


def preview_reset(pipeline: Pipeline, view_name: str, connector_name: str) -> dict[str, Any]:
    """What a reset of the connector would do now; nothing is changed (``dry_run=true``).

    Raises what the request would raise (404, 503 for a stopped pipeline). The
    answer names the reset a request would attach to; the caller turns its
    token into a status URL.
    """
    from app.view_data.models import ViewLog

    connector = get_connector(pipeline, view_name, connector_name)
    if pipeline.status == PipelineStatus.STOPPED:
        raise PipelineNotRunning(
            pipeline.name, f"Pipeline '{pipeline.name}' is stopped; start it to reset a connector"
        )
    head = db.session.execute(
        sa.select(ViewLog.last_seq, ViewLog.records).where(ViewLog.view_id == connector.view_id)
    ).one_or_none()
    live = _live_reset(connector.id, pipeline.incarnation)
    staged = connector.transport in STAGED_TRANSPORTS
    in_progress = None
    if live is not None:
        in_progress = {
            "reset_id": str(live.id),
            "status": live.status,
            "phase": live.phase,
            "requested_at": live.requested_at.isoformat(),
            "token": live.token,
            "cancellable": live.origin != ResetOrigin.REDO and (staged or live.started_at is None),
        }
    answer = {
        "pipeline_name": pipeline.name,
        "view_name": view_name,
        "connector_name": connector.name,
        "transport": connector.transport,
        "action": "queue" if live is None else "attach",
        "switch": "atomic" if staged else "in_place",
        "readers_see": _READERS_SEE.get(connector.transport, _READERS_SEE["http"]),
        "cancellable_until": "switch" if staged else "start",
        "snapshot_records": int(head.records) if head is not None else 0,
        "log_position": int(head.last_seq) if head is not None else 0,
        "connector_sync_state": connector.sync_state,
        "reset_in_progress": in_progress,
    }
    db.session.rollback()
    return answer


# Transports whose reset fills a staging copy and switches it in at the end: until that
# switch the sink is untouched, so such a reset can be cancelled while it runs.
STAGED_TRANSPORTS = ("file", "postgres", "delta")


def cancel_reset(tenant: str, pipeline_name: str, token: str | None) -> dict[str, Any]:
    """Cancel the reset a token names; return its status (``cancelled``), or raise.

    The token is judged as ``reset_status`` judges it (400, 404, 410, 503). A
    reset may be cancelled while its sink is untouched: queued, or running on
    a sink that stages its snapshot (file, postgres, delta). Refused with 409
    ``ResetNotCancellable`` (``details.reason``): a reset that ended
    (``complete``, ``failed``, ``cancelled``, ``abandoned``), an http sink
    already told to reset (``sink_reset``), or a snapshot the connector owes
    anyway (``owed``: a redo, or a sink found damaged).

    One conditional update of the reset's row decides a race with the
    executor's final switch, which updates the same row under its fence
    before it switches: exactly one of the two wins. The connector is given
    back as it was (its position never moved, so it streams on from there):
    here, when no executor holds it; by the executor, when it finds the reset
    cancelled at its next fenced write and drops its staging copy. Refused
    (``owed``) while the executor of a replay has stopped answering: it may
    have died switching its copy in, so the reset is taken over and completed
    (a takeover of such a replay is not cancellable either). An executor that
    holds a live lease when the reset is cancelled and then dies leaves its
    connector owing the snapshot: a redo (origin ``redo``) makes the sink whole.
    """
    status = reset_status(tenant, pipeline_name, token)
    reset_id = uuid.UUID(status["reset_id"])
    connector_id = db.session.execute(
        sa.select(Reset.connector_id).where(Reset.id == reset_id)
    ).scalar_one()
    # The connector's row first, as the executor's fenced writes take it: they wait
    # for each other instead of deadlocking (a no-op update locks it on both engines).
    db.session.execute(
        sa.update(Connector)
        .where(Connector.id == connector_id)
        .values(sync_state=Connector.sync_state)
        .execution_options(synchronize_session=False)
    )
    reset = db.session.execute(
        sa.select(Reset).where(Reset.id == reset_id).execution_options(populate_existing=True)
    ).scalar_one()
    connector = db.session.get(Connector, connector_id, populate_existing=True)
    started = reset.started_at is not None
    refused = cancel_refusal(reset, connector)
    if refused is not None:
        db.session.rollback()
        raise _not_cancellable(*refused)
    now = read_db_time()
    held = connector.lease_owner is not None
    live = held and connector.lease_expires_at is not None and connector.lease_expires_at > now
    if started and held and not live and reset.phase == ResetPhase.REPLAYING_SNAPSHOT:
        # Its executor stopped answering mid-replay, perhaps while switching its copy in.
        db.session.rollback()
        raise _not_cancellable(
            "owed",
            "The executor of this reset stopped mid-replay and may have switched the sink; "
            "the reset is taken over and runs on to the end",
        )
    phases = [dict(p) for p in reset.phases or []]
    if phases and phases[-1].get("ended_at") is None:
        phases[-1]["ended_at"] = utcnow().isoformat()
    ended = db.session.execute(
        sa.update(Reset)
        .where(Reset.id == reset_id, Reset.status == ResetStatus.IN_PROGRESS)
        .values(
            status=ResetStatus.CANCELLED,
            completed_at=now,
            queued_connector_id=None,
            next_attempt_at=None,
            phases=phases,
            error="Cancelled; the sink kept what it had",
        )
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount != 1:  # the executor's switch committed first
        db.session.rollback()
        raise _not_cancellable(ResetStatus.COMPLETE, "The reset completed meanwhile")
    values: dict[str, Any] = {"resets_cancelled": Connector.resets_cancelled + 1}
    if started and not live:
        # No executor holds it: given back here. A live one finds the reset cancelled at
        # its next fenced write (before any switch), drops its copy and gives it back.
        values.update(state_given_back(reset.prior_sync_state))
    db.session.execute(
        sa.update(Connector)
        .where(Connector.id == reset.connector_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    due.mark_connector(reset.connector_id)  # it streams on (or is given back) at once
    events.reset_ended(reset_id, EventType.RESET_CANCELLED)
    db.session.commit()
    return reset_status(tenant, pipeline_name, token)


def cancel_refusal(reset: Reset, connector: Connector) -> tuple[str, str] | None:
    """Why the reset's row and its connector's refuse a cancel: ``(reason, message)``, or None.

    :func:`cancel_reset` decides by it (on rows it has locked), and the console
    asks it before showing a Cancel button. An executor that stopped answering
    mid-replay is found only when cancelling, against the database's clock.
    """
    started = reset.started_at is not None
    if reset.status != ResetStatus.IN_PROGRESS:
        return reset.status, f"The reset is {reset.status} already"
    if (
        reset.origin == ResetOrigin.REDO
        or reset.prior_sync_state == SyncState.RESETTING
        or (not started and connector.sync_state == SyncState.RESETTING)
    ):
        return "owed", "The sink owes this snapshot (it was found damaged, or cut short)"
    if started and connector.transport not in STAGED_TRANSPORTS:
        return "sink_reset", "The sink was already told to reset; the reset runs on to the end"
    return None


def _not_cancellable(reason: str, message: str) -> ResetNotCancellable:
    return ResetNotCancellable(message, details={"reason": reason})


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
        _R.phases,
        _R.rate_at,
        _R.rate_records,
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
        phases,
        rate_at,
        rate_records,
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
    rate, eta = _rate_and_eta(
        status, phase, snapshot_records, replayed_records, rate_at, rate_records
    )
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
        "rate_records_per_second": rate,
        "eta_seconds": eta,
        "phases": phases or [],
    }


# The replay's rate is measured over at least this long (the executor keeps its
# sample about this far back), and not from a sample older than this.
RATE_WINDOW_SECONDS = 5.0
STALE_RATE_SECONDS = 60.0


def _rate_and_eta(
    status: str,
    phase: str,
    snapshot_records: int,
    replayed_records: int,
    rate_at: dt.datetime | None,
    rate_records: int | None,
) -> tuple[float | None, float | None]:
    """Records per second over the last seconds of a replay, and the seconds left (or None).

    From the executor's sample (where the replay stood a few seconds ago) to
    now: a replay that stalls shows its rate falling, not frozen. None while
    nothing is replaying, or when the sample says nothing yet.
    """
    if status != ResetStatus.IN_PROGRESS or phase != ResetPhase.REPLAYING_SNAPSHOT:
        return None, None
    if rate_at is None or rate_records is None:
        return None, None
    elapsed = (utcnow() - rate_at).total_seconds()
    if elapsed < 0.5 or elapsed > STALE_RATE_SECONDS:
        return None, None
    rate = max(0.0, (replayed_records - rate_records) / elapsed)
    left = max(0, snapshot_records - replayed_records)
    eta = round(left / rate, 1) if rate > 0 else None
    return round(rate, 1), eta


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
