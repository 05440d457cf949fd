"""View data: each view's current contents (a Z-set) and its ordered change log."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime
from app.extensions import db

_VIEW_FK = "views.id"


class ViewLog(db.Model):
    """The head of a view's change log: the last sequence number handed out.

    Writers bump ``last_seq`` first thing in their transaction; the row lock
    (PostgreSQL) or the write lock (SQLite) this takes serializes the writers
    of one view, so sequence ranges never overlap and the Z-set is updated by
    one writer at a time. Compaction takes the same lock.
    """

    __tablename__ = "view_logs"
    __table_args__ = (
        # Views whose log may have rows to compact: compaction looks at these only.
        sa.Index(
            "ix_view_logs_compact_due",
            "compact_due_at",
            sqlite_where=sa.text("compact_due_at IS NOT NULL"),
            postgresql_where=sa.text("compact_due_at IS NOT NULL"),
        ),
    )

    view_id: Mapped[int] = mapped_column(
        sa.ForeignKey(_VIEW_FK, ondelete="CASCADE"), primary_key=True
    )
    last_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # The log holds the changes after this seq only: compaction removed the ones
    # before (see app.view_data.compaction).
    compacted_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # The Z-set's size as of last_seq: the sum of its weights (a record of weight n
    # counts n times), kept by every batch in the transaction that stores it, so a
    # snapshot knows its size without a pass over the records.
    records: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    # Set when rows may have become removable (a push to a view with no connector,
    # a delivery far past compacted_seq, a connector removed); compaction clears
    # it once nothing more can go (see app.view_data.compaction).
    compact_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ViewChange(db.Model):
    """One change of a view, in log order: a record inserted (+1) or deleted (-1)."""

    __tablename__ = "view_changes"
    __table_args__ = (sa.CheckConstraint("weight IN (1, -1)", name="ck_view_changes_weight"),)

    view_id: Mapped[int] = mapped_column(
        sa.ForeignKey(_VIEW_FK, ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    weight: Mapped[int] = mapped_column(sa.SmallInteger)
    # The record as canonical JSON (sorted keys, no spaces).
    record: Mapped[str] = mapped_column(sa.Text)


class ViewRecord(db.Model):
    """One record of a view's current contents and its weight (how many times it is in).

    ``key`` is the SHA-256 of the record's canonical JSON: a fixed-size key
    that every engine can index, whatever the record's size. Rows whose weight
    drops to 0 are deleted, so every stored weight is positive.
    """

    __tablename__ = "view_records"
    __table_args__ = (
        sa.CheckConstraint("weight > 0", name="ck_view_records_weight"),
        # SQLite only: a view's rows in the table's own (rowid) order, which a
        # snapshot reads them in (app.delivery.reader). PostgreSQL reads them
        # by the primary key.
        sa.Index("ix_view_records_view_rowid", "view_id").ddl_if(dialect="sqlite"),
    )

    view_id: Mapped[int] = mapped_column(
        sa.ForeignKey(_VIEW_FK, ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    record: Mapped[str] = mapped_column(sa.Text)
    weight: Mapped[int] = mapped_column(sa.BigInteger)
