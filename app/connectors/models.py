"""Output connectors: they deliver a view's changes to a sink."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database import UTCDateTime, utcnow
from app.extensions import db
from app.pipelines.models import NAME_MAX, View


class SyncState:
    """Whether a connector's sink holds what its position says."""

    # The sink holds the view as of delivered_seq; delivery streams on from there.
    IN_SYNC = "in_sync"
    # A full snapshot is owed (a reset is queued, under way, or to be redone).
    RESETTING = "resetting"
    # Given up (a poison batch, or a reset out of attempts); a reset brings it back.
    FAILED = "failed"
    ALL = (IN_SYNC, RESETTING, FAILED)


class Connector(db.Model):
    """An output connector of one view, with its transport and its settings."""

    __tablename__ = "connectors"
    __table_args__ = (
        sa.UniqueConstraint("view_id", "name", name="uq_connectors_view_name"),
        sa.CheckConstraint(
            "sync_state IN ('in_sync', 'resetting', 'failed')", name="ck_connectors_sync_state"
        ),
        # The due index (app.delivery.due): only connectors with work, or work to
        # come at a known time, are in it, so finding work costs nothing for the
        # idle ones; by tenant first, so tenants can be served in turn.
        sa.Index(
            "ix_connectors_due",
            "tenant",
            "due_at",
            sqlite_where=sa.text("due_at IS NOT NULL"),
            postgresql_where=sa.text("due_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    # The id sinks see: a UUID, never reused (row ids are, after a delete).
    uid: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True, default=uuid.uuid4)
    view_id: Mapped[int] = mapped_column(sa.ForeignKey("views.id", ondelete="CASCADE"), index=True)
    # The tenant of the connector's pipeline (it never changes): work is taken
    # tenant by tenant, and per-tenant quotas count connectors by it.
    tenant: Mapped[str] = mapped_column(sa.String(NAME_MAX), index=True)
    name: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    transport: Mapped[str] = mapped_column(sa.String(32))
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The sink file this connector owns (resolved, relative to SINK_DIR), so no two
    # connectors write one file; NULL for sinks that are not files.
    sink_key: Mapped[str | None] = mapped_column(sa.String(1024), unique=True)

    # Whether the sink holds what delivered_seq says (see SyncState). Anything but
    # in_sync means a full snapshot is owed: the connector never streams meanwhile.
    sync_state: Mapped[str] = mapped_column(
        sa.String(16), default=SyncState.IN_SYNC, server_default=SyncState.IN_SYNC, index=True
    )
    sync_reason: Mapped[str | None] = mapped_column(sa.Text)
    # Paused by an operator: the connector keeps its place and streams nothing
    # until started again (resets still run).
    paused: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())

    # Delivery state (see app.delivery). The last change-log seq the sink has,
    # and for a file sink the file's length at that point: recovery cuts the
    # file back to it, so a batch written but not recorded is written again once.
    delivered_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    committed_length: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # An http batch sent but not yet acknowledged: a retry resends exactly this range.
    inflight_first_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    inflight_last_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    # Which worker (delivery or reset) holds the connector, until when (database
    # clock), and the fencing epoch: bumped at every take, checked by every write.
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_epoch: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # Leases taken over from a holder that let them run out (died or stalled).
    lease_takeovers: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # What the stats route shows.
    transmitted_records: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    transmitted_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    transport_errors: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_error_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # When the last batch was delivered (database clock): the last success.
    last_delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Failures in a row, and when delivery may be tried again (backoff).
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resets_completed: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    # Its resets that failed, and those abandoned with their incarnation, and the
    # snapshot records its resets replayed: /metrics sums these, not the resets.
    resets_failed: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    resets_abandoned: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    resets_cancelled: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    replayed_records: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # When the connector may next have work (database clock): changes to deliver,
    # a reset to run, a retry, or a lease that runs out. NULL: nothing until an
    # event marks it. ``wakes`` counts those events, so whoever decides there is
    # nothing to do can tell whether one came in meanwhile (app.delivery.due).
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    wakes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # A table sink's commit id after the last batch or reset applied: the Delta
    # table's version, or the PostgreSQL transaction id. NULL for other sinks.
    sink_version: Mapped[int | None] = mapped_column(sa.BigInteger)
    # A skip (``start`` with ``skip``) moved delivered_seq from here: a table sink,
    # which records its own position, is told to skip the same way before its
    # next batch (then NULL). Its position behind delivered_seq is no damage then.
    skipped_from: Mapped[int | None] = mapped_column(sa.BigInteger)

    view: Mapped[View] = relationship(lazy="joined", innerjoin=True)
