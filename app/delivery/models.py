"""The worker processes that deliver and reset, as the database knows them."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime, utcnow
from app.extensions import db


class WorkerProcess(db.Model):
    """One running worker process and its heartbeat (database clock).

    The process's poller writes it every few seconds, whatever its delivery
    threads are doing, so ``/readyz`` in any process on any host can tell
    whether some worker is alive (``app.health``). A process that stops
    cleanly removes its row; a crashed one's row goes stale and is pruned.
    """

    __tablename__ = "worker_processes"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
