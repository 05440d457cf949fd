"""Pipelines and their output views."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.database import UTCDateTime, utcnow
from app.extensions import db

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"
NAME_MAX = 100
# How a name is described wherever one is refused (the API, the command line).
NAME_FIELD_HELP = "Letters, digits, '_' and '-', 1 to 100 characters."
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(value: object) -> bool:
    """Tell whether ``value`` is a name as NAME_PATTERN allows them (pipelines, views, tenants...).

    The whole value must match: with ``re.match``, ``$`` also matches before a
    final newline, so ``"orders\\n"`` would pass.
    """
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None


class PipelineStatus:
    """The statuses a pipeline can be in."""

    STOPPED = "stopped"
    RUNNING = "running"
    PAUSED = "paused"
    ALL = (STOPPED, RUNNING, PAUSED)


class Pipeline(db.Model):
    """A named streaming program whose engine runs elsewhere."""

    __tablename__ = "pipelines"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "name", name="uq_pipelines_tenant_name"),
        sa.CheckConstraint("incarnation >= 0", name="ck_pipelines_incarnation"),
        sa.CheckConstraint(
            "status IN ('stopped', 'running', 'paused')", name="ck_pipelines_status"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    name: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    status: Mapped[str] = mapped_column(sa.String(16), default=PipelineStatus.STOPPED)
    incarnation: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_since: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    views: Mapped[list[View]] = relationship(
        back_populates="pipeline",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="View.position",
    )

    @property
    def view_names(self) -> list[str]:
        """The names of the pipeline's output views, in declaration order."""
        return [view.name for view in self.views]

    @property
    def is_live(self) -> bool:
        """True while an incarnation is live (running or paused)."""
        return self.status != PipelineStatus.STOPPED


class View(db.Model):
    """An output view of a pipeline; its connectors deliver its changes."""

    __tablename__ = "views"
    __table_args__ = (sa.UniqueConstraint("pipeline_id", "name", name="uq_views_pipeline_name"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    pipeline_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("pipelines.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(NAME_MAX))
    position: Mapped[int] = mapped_column(sa.Integer, default=0)

    pipeline: Mapped[Pipeline] = relationship(back_populates="views")
