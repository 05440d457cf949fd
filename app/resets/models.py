"""Output connector resets."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.connectors.models import Connector, SyncState
from app.database import UTCDateTime, utcnow
from app.extensions import db


class ResetPhase:
    """Where a reset is in its work."""

    QUEUED = "queued"
    RESETTING_SINK = "resetting_sink"
    REPLAYING_SNAPSHOT = "replaying_snapshot"
    DONE = "done"
    ALL = (QUEUED, RESETTING_SINK, REPLAYING_SNAPSHOT, DONE)


class ResetStatus:
    """How a reset stands, as callers see it."""

    IN_PROGRESS = "inprogress"
    COMPLETE = "complete"
    FAILED = "failed"
    # Cancelled before it changed the sink: the sink kept what it had.
    CANCELLED = "cancelled"
    # The incarnation ended before the reset completed; never served with 200.
    ABANDONED = "abandoned"
    ALL = (IN_PROGRESS, COMPLETE, FAILED, CANCELLED, ABANDONED)


class ResetOrigin:
    """Why a reset exists."""

    REQUEST = "request"
    REDO = "redo"
    ALL = (REQUEST, REDO)


class Reset(db.Model):
    """One reset of one output connector, in one incarnation of its pipeline."""

    __tablename__ = "resets"
    __table_args__ = (
        sa.Index("ix_resets_pipeline_incarnation_status", "pipeline_id", "incarnation", "status"),
        sa.Index("ix_resets_status_phase", "status", "phase"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    pipeline_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("pipelines.id", ondelete="CASCADE")
    )
    connector_id: Mapped[int] = mapped_column(
        sa.ForeignKey("connectors.id", ondelete="CASCADE"), index=True
    )
    incarnation: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16), default=ResetStatus.IN_PROGRESS)
    phase: Mapped[str] = mapped_column(sa.String(32), default=ResetPhase.QUEUED)
    # Equal to connector_id while the reset is queued, NULL after: its unique
    # index lets only one queued reset per connector exist, on every engine.
    queued_connector_id: Mapped[int | None] = mapped_column(sa.Integer, unique=True)
    # The token handed out for this reset, so a duplicate request gets it again.
    token: Mapped[str] = mapped_column(sa.String(512), default="")
    snapshot_records: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    replayed_records: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Who asked: an operator ("request"), or the service redoing a snapshot the
    # sink still owes ("redo": a reset cut short by a stop, a damaged sink file).
    origin: Mapped[str] = mapped_column(
        sa.String(16), default=ResetOrigin.REQUEST, server_default=ResetOrigin.REQUEST
    )
    # Attempts so far; a failed attempt is retried at next_attempt_at (database clock).
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The worker on it, and the connector lease epoch it holds (its fence).
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    epoch: Mapped[int | None] = mapped_column(sa.BigInteger)
    # The connector's sync state when the reset started: a cancel gives it back.
    prior_sync_state: Mapped[str | None] = mapped_column(sa.String(16))
    # Each phase it went through: [{"name", "started_at", "ended_at"}], in order.
    phases: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON)
    # The replay's progress a few seconds ago (when, and how many records then): its
    # rate over the last seconds, and from it the time left.
    rate_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    rate_records: Mapped[int | None] = mapped_column(sa.BigInteger)

    connector: Mapped[Connector] = relationship(lazy="joined", innerjoin=True)


def state_given_back(prior_sync_state: str | None) -> dict[str, Any]:
    """The connector's sync values once a cancelled reset gives it back as it was.

    Its position never moved (a staged sink's moves only at the switch), so it
    streams on from there; a connector that had failed stays failed.
    """
    if prior_sync_state == SyncState.FAILED:
        return {
            "sync_state": SyncState.FAILED,
            "sync_reason": "A reset was cancelled; the connector stays failed until one completes",
            "next_attempt_at": None,
        }
    return {"sync_state": SyncState.IN_SYNC, "sync_reason": None, "next_attempt_at": None}
