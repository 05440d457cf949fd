"""Change-log compaction: the worker removes log rows that nobody needs any more.

A view's contents (the Z-set) need no log; its connectors do: each streams
the changes after its ``delivered_seq``. So the rows up to the smallest
position among the view's connectors can go, and a view with no connector
needs no log at all:

- every connector counts, whatever its state: a failed, paused or resetting
  connector keeps its place, and the log behind it (the log is as long as the
  largest lag);
- an http batch in flight (``inflight_first_seq`` to ``inflight_last_seq``) is
  resent exactly: the bound stops before ``inflight_first_seq``;
- a reset replays the Z-set as of its snapshot's position S, then streams the
  log after S. An http sink's connector records S as its ``delivered_seq``
  when its replay starts; a staged sink's (file, postgres, delta) only at the
  switch, so that a cancelled reset leaves it streaming on from its older
  position, whose log is still here. Until then ``delivered_seq`` is that
  older position, at or before S (S is where the log ended when the snapshot
  was taken, after every position recorded before). Positions only move
  forward, so the bound never passes a snapshot taken or to be taken.

One transaction per batch of at most ``COMPACTION_BATCH_SIZE`` rows, reasoned
in the database, not in a process (many workers on many hosts compact at
once):

1. ``UPDATE view_logs`` of the view takes its row lock (PostgreSQL) or the
   write lock (SQLite): the view's writers and other compactors wait;
2. ``SELECT ... FOR UPDATE SKIP LOCKED`` of the view's row (PostgreSQL;
   SQLite's write lock already excludes every writer): adding a connector
   checks its foreign key with ``FOR KEY SHARE`` on that row, so none is added
   until the commit, and while one is being added the view is left for the
   next pass (not waited for: deleting a view takes these two locks the other
   way round);
3. the bound is read then, so it sees every connector of the view;
4. the rows up to it go, and ``view_logs.compacted_seq`` says where the log
   now starts.

Which views are looked at: those marked due (``view_logs.compact_due_at``, a
partial index), so a pass costs nothing for views with nothing to drop. A
push marks its view once a whole batch is past the log's start, a delivery
once its connector is that far along, a removed connector its view; a pass
clears the mark in the transaction that finds too little to remove. Marks
are written on the view's row, which that transaction locks, so none is lost.

A connector added *after* rows it would need are gone (the view compacted,
the pipeline stopped, the connector added) starts before the log does. The
delivery worker finds its position before the log's start and sends it to a
snapshot (``sync_state: resetting``; the worker queues a reset with origin
``redo``, as for a damaged sink): it never streams a log with a hole in it.

A view's log is compacted a whole batch at a time, once that many rows can
go: a log holds the largest lag plus less than one batch.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import sqlalchemy as sa
from flask import current_app

from app.connectors.models import Connector
from app.database import begin_alone, db_time
from app.extensions import db
from app.pipelines.models import View
from app.view_data.models import ViewChange, ViewLog

log = logging.getLogger(__name__)

# Views looked at per query, and batches one pass deletes at most (a pass stays short).
VIEWS_PER_QUERY = 100
MAX_BATCHES_PER_PASS = 20

_last_pass: float | None = None
_pass_lock = threading.Lock()


def _kept_after() -> sa.ColumnElement[int]:
    """A connector's bound: it needs every change after it (before an http batch in flight)."""
    return sa.case(
        (
            Connector.inflight_first_seq <= Connector.delivered_seq,
            Connector.inflight_first_seq - 1,
        ),
        else_=Connector.delivered_seq,
    )


def _bound() -> sa.ColumnElement[int]:
    """The last seq a view's log may lose: its connectors' smallest bound, else its end.

    For a query over ``view_logs`` (the connectors' subquery correlates to it).
    """
    needed = (
        sa.select(sa.func.min(_kept_after()))
        .where(Connector.view_id == ViewLog.view_id)
        .scalar_subquery()
    )
    return sa.func.coalesce(needed, ViewLog.last_seq)


def batch_size() -> int:
    """Rows removed per statement, and the least a view must have to drop before it is marked."""
    return int(current_app.config["COMPACTION_BATCH_SIZE"])


def due_now() -> sa.ColumnElement:
    """``compact_due_at`` once a view may have rows to drop: kept if set, else now."""
    return sa.func.coalesce(ViewLog.compact_due_at, db_time())


def mark_due(view_id: int) -> None:
    """Mark a view's log as maybe having a batch to drop, in a transaction of its own.

    The row is written even when already marked, so that a pass deciding
    "nothing to drop" under the row's lock is followed by this mark.
    """
    db.session.execute(
        sa.update(ViewLog)
        .where(ViewLog.view_id == view_id)
        .values(compact_due_at=due_now())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


def next_due() -> dt.datetime | None:
    """When the earliest marked view is due (None: none is), by the database clock."""
    begin_alone()  # the poller asks every COMPACTION_INTERVAL_SECONDS: one round trip
    due = db.session.execute(
        sa.select(sa.func.min(ViewLog.compact_due_at)).where(ViewLog.compact_due_at.is_not(None))
    ).scalar_one_or_none()
    db.session.rollback()
    return due


def compact_view(view_id: int, batch_size: int, min_rows: int | None = None) -> int:
    """Remove up to ``batch_size`` rows the view's log no longer needs; return how many.

    Nothing is removed unless at least ``min_rows`` (default: ``batch_size``)
    rows can go. One transaction, committed here (see the module's docstring
    for its locks).
    """
    min_rows = batch_size if min_rows is None else min_rows
    db.session.rollback()
    start = db.session.execute(
        sa.update(ViewLog)
        .where(ViewLog.view_id == view_id)
        .values(compacted_seq=ViewLog.compacted_seq)
        .returning(ViewLog.compacted_seq)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if start is None:
        db.session.rollback()
        return 0
    locked = db.session.execute(
        sa.select(View.id).where(View.id == view_id).with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if locked is None:
        db.session.rollback()
        return 0
    bound = db.session.execute(sa.select(_bound()).where(ViewLog.view_id == view_id)).scalar_one()
    upto = min(bound, start + batch_size)
    if upto - start < max(1, min_rows):
        # Too little to drop: the view leaves the index until it is marked again
        # (under this row's lock, so a mark made meanwhile waits and lands after).
        db.session.execute(
            sa.update(ViewLog)
            .where(ViewLog.view_id == view_id)
            .values(compact_due_at=None)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        return 0
    removed = db.session.execute(
        sa.delete(ViewChange)
        .where(ViewChange.view_id == view_id, ViewChange.seq > start, ViewChange.seq <= upto)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.execute(
        sa.update(ViewLog)
        .where(ViewLog.view_id == view_id)
        .values(compacted_seq=upto)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return removed


def compact(
    batch_size: int | None = None,
    min_rows: int | None = None,
    max_batches: int = MAX_BATCHES_PER_PASS,
    everything: bool = False,
) -> int:
    """One pass over the views marked due; return the rows removed.

    A view is compacted ``batch_size`` rows (default ``COMPACTION_BATCH_SIZE``)
    at a time, once at least ``min_rows`` (default: a whole batch) can go, for
    at most ``max_batches`` batches in all. ``everything`` looks at every view
    (``pipeline-manager views compact``), not only the marked ones.
    """
    batch_size = int(batch_size or current_app.config["COMPACTION_BATCH_SIZE"])
    min_rows = max(1, batch_size if min_rows is None else min_rows)
    query = sa.select(ViewLog.view_id)
    if everything:
        query = query.where(ViewLog.last_seq > ViewLog.compacted_seq).order_by(ViewLog.view_id)
    else:
        query = query.where(
            ViewLog.compact_due_at.is_not(None), ViewLog.compact_due_at <= db_time()
        ).order_by(ViewLog.compact_due_at)
    candidates = db.session.execute(query.limit(VIEWS_PER_QUERY)).scalars().all()
    db.session.rollback()
    removed = 0
    batches = 0
    for view_id in candidates:
        while batches < max_batches:
            count = compact_view(view_id, batch_size, min_rows)
            if not count:
                break
            removed += count
            batches += 1
    return removed


def run_due() -> int:
    """Run a pass if ``COMPACTION_INTERVAL_SECONDS`` have passed since this process's last.

    The worker loop calls this on every round; one thread of the process runs
    the pass, the others go on. 0 turns compaction off. Returns rows removed.
    """
    global _last_pass
    interval = float(current_app.config["COMPACTION_INTERVAL_SECONDS"])
    if interval <= 0:
        return 0
    now = time.monotonic()
    if _last_pass is not None and now - _last_pass < interval:
        return 0
    if not _pass_lock.acquire(blocking=False):
        return 0
    try:
        _last_pass = now
        removed = compact()
    finally:
        _pass_lock.release()
    if removed:
        log.info("compacted %d change-log rows", removed)
    return removed
