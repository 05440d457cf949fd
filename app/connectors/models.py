"""Output connectors: they deliver a view's changes to a sink."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database import UTCDateTime, utcnow
from app.extensions import db
from app.pipelines.models import NAME_MAX, View


class Connector(db.Model):
    """An output connector of one view, with its transport and its settings."""

    __tablename__ = "connectors"
    __table_args__ = (sa.UniqueConstraint("view_id", "name", name="uq_connectors_view_name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    view_id: Mapped[int] = mapped_column(sa.ForeignKey("views.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    transport: Mapped[str] = mapped_column(sa.String(32))
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    # Delivery state (see app.delivery). The last change-log seq the sink has,
    # and for a file sink the file's length at that point: recovery cuts the
    # file back to it, so a batch written but not recorded is written again once.
    delivered_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    committed_length: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # Which worker (delivery or reset) holds the connector, and until when.
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # What the stats route shows.
    transmitted_records: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    transmitted_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    transport_errors: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_error_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Failures in a row, and when delivery may be tried again (backoff).
    consecutive_failures: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resets_completed: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")

    view: Mapped[View] = relationship(lazy="joined", innerjoin=True)
