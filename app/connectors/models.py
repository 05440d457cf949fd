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

    view: Mapped[View] = relationship(lazy="joined", innerjoin=True)
