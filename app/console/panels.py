"""What the console shows of connectors, a page at a time, in a few statements however many.

A pipeline page lists its connectors by view name, then connector name, a
page at a time. Pages are cut by key (keyset): a page starts after a
:class:`Cursor`, the (view, connector) names of the connector before it, so a
page costs the same however deep it is and however many connectors the
pipeline has. Only counts (how many connectors, how many before this page)
read past the page, and those are ``COUNT`` in SQL.

One page's panels (stats, the latest reset's progress, the reset history)
load in a fixed number of statements: the page's connectors with their views,
their views' log ends, and the resets shown, never one statement per
connector. The numbers are those the API serves: health is
:func:`app.delivery.service.health`, lag is measured against the view's log
end as the stats route does, the last delivery counts a completed reset's
replay as well as streamed batches, and a reset's progress is shown exactly when
``reset_status`` would answer for its token (tests/test_console.py checks both
against the API's answers). ``make bench`` does not cover the console;
tests/test_console.py counts the statements of a page and a poll.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased, contains_eager, lazyload

from app.connectors.models import Connector, SyncState
from app.connectors.schemas import shown_transport
from app.database import utcnow
from app.delivery import service as delivery_service
from app.extensions import db
from app.pipelines.models import Pipeline, View, is_valid_name
from app.resets import service as resets_service
from app.resets.models import Reset, ResetPhase, ResetStatus
from app.view_data.models import ViewLog

# Resets listed per connector (newest first).
HISTORY_SIZE = 10
# The pipeline list names a view's connectors up to this many; past it, it counts them.
LIST_NAMES_UP_TO = 10
# Between a view's name and a connector's in a cursor: no name holds it (NAME_PATTERN).
_SEPARATOR = "."


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: just after this connector of this view."""

    view: str
    connector: str

    @classmethod
    def parse(cls, value: str | None) -> Cursor | None:
        """Read ``view.connector`` from a URL; anything else is no cursor (the first page)."""
        view, separator, connector = (value or "").partition(_SEPARATOR)
        if not separator or not is_valid_name(view) or not is_valid_name(connector):
            return None
        return cls(view, connector)

    def __str__(self) -> str:
        """The cursor as it goes in a URL."""
        return f"{self.view}{_SEPARATOR}{self.connector}"


def _of_pipeline(pipeline: Pipeline) -> sa.Select:
    """The pipeline's connectors with their views, joined (filters and order to add)."""
    return (
        sa.select(Connector)
        .join(Connector.view)
        .options(contains_eager(Connector.view))
        .where(View.pipeline_id == pipeline.id)
    )


def connectors_after(pipeline: Pipeline, after: Cursor | None, limit: int) -> list[Connector]:
    """Return the pipeline's first ``limit`` connectors after ``after``, by view then name.

    Two statements at most: the rest of the cursor's view, then the views after
    it. Each walks the unique (view, name) indexes from the cursor on, where
    one statement with an OR over both names would read the cursor's view from
    its start.
    """
    found: list[Connector] = []
    if after is not None:
        found = list(
            db.session.execute(
                _of_pipeline(pipeline)
                .where(View.name == after.view, Connector.name > after.connector)
                .order_by(Connector.name)
                .limit(limit)
            ).scalars()
        )
        if len(found) == limit:
            return found
    query = _of_pipeline(pipeline)
    if after is not None:
        query = query.where(View.name > after.view)
    query = query.order_by(View.name, Connector.name).limit(limit - len(found))
    return found + list(db.session.execute(query).scalars())


def cursor_before(pipeline: Pipeline, first: Cursor, size: int) -> Cursor | None:
    """Return the cursor of the page of ``size`` connectors ending just before ``first``.

    None when that page is the first one. Walks back from ``first`` as
    :func:`connectors_after` walks forward: at most ``size`` + 1 keys, in two
    statements at most.
    """
    keys = sa.select(View.name, Connector.name).join(Connector.view)
    keys = keys.where(View.pipeline_id == pipeline.id)
    same_view = db.session.execute(
        keys.where(View.name == first.view, Connector.name < first.connector)
        .order_by(Connector.name.desc())
        .limit(size + 1)
    ).all()
    if len(same_view) > size:
        return Cursor(*same_view[size])
    row = db.session.execute(
        keys.where(View.name < first.view)
        .order_by(View.name.desc(), Connector.name.desc())
        .offset(size - len(same_view))
        .limit(1)
    ).one_or_none()
    return None if row is None else Cursor(*row)


def count_through(pipeline: Pipeline, cursor: Cursor) -> int:
    """Return how many of the pipeline's connectors come up to and with ``cursor`` (COUNT)."""
    return db.session.execute(
        sa.select(sa.func.count())
        .select_from(Connector)
        .join(Connector.view)
        .where(
            View.pipeline_id == pipeline.id,
            sa.or_(
                View.name < cursor.view,
                sa.and_(View.name == cursor.view, Connector.name <= cursor.connector),
            ),
        )
    ).scalar_one()


def view_counts(pipeline: Pipeline) -> list[tuple[View, int]]:
    """Return the pipeline's views in their declared order, each with its connectors' count."""
    return [
        (view, count)
        for view, count in db.session.execute(
            sa.select(View, sa.func.count(Connector.id))
            .outerjoin(Connector, Connector.view_id == View.id)
            .where(View.pipeline_id == pipeline.id)
            .group_by(View.id)
            .order_by(View.position, View.id)
        ).all()
    ]


def _log_ends(view_ids: set[int]) -> dict[int, int]:
    """Each view's change-log end (as :func:`app.view_data.store.log_end`), in one statement."""
    if not view_ids:
        return {}
    rows = db.session.execute(
        sa.select(ViewLog.view_id, ViewLog.last_seq).where(ViewLog.view_id.in_(view_ids))
    ).all()
    return {view_id: last_seq or 0 for view_id, last_seq in rows}


def _histories(connector_ids: list[int]) -> dict[int, list[Reset]]:
    """Each connector's latest resets, newest first (as :func:`app.resets.service.history`).

    One statement for the whole page: the resets ranked per connector (a window
    function) and the first HISTORY_SIZE of each kept.
    """
    if not connector_ids:
        return {}
    order = (Reset.requested_at.desc(), Reset.id.desc())
    rank = sa.func.row_number().over(partition_by=Reset.connector_id, order_by=order)
    ranked = (
        sa.select(Reset, rank.label("rank")).where(Reset.connector_id.in_(connector_ids)).subquery()
    )
    shown = aliased(Reset, ranked)
    rows = db.session.execute(
        sa.select(shown)
        .where(ranked.c.rank <= HISTORY_SIZE)
        .order_by(ranked.c.connector_id, ranked.c.rank)
        # The connectors are in the session already; no join back to them.
        .options(lazyload(shown.connector))
    ).scalars()
    return {
        connector_id: list(resets)
        for connector_id, resets in itertools.groupby(rows, key=lambda r: r.connector_id)
    }


def _progress(
    pipeline: Pipeline, connector: Connector, latest: Reset | None
) -> dict[str, Any] | None:
    """The latest reset's progress; None where ``reset_status`` would not answer for its token.

    It refuses a reset of an ended incarnation, any reset of a stopped
    pipeline, and an abandoned one: the history shows how those ended.
    ``cancellable`` is what ``reset_cancel`` decides from the same rows.
    """
    if latest is None or latest.status == ResetStatus.ABANDONED or not latest.token:
        return None
    if not pipeline.is_live or latest.incarnation != pipeline.incarnation:
        return None
    snapshot, replayed = latest.snapshot_records, latest.replayed_records
    if latest.status == ResetStatus.COMPLETE:
        percent = 100
    elif snapshot:
        percent = min(100, replayed * 100 // snapshot)
    else:
        percent = 0
    rate = eta = None
    if latest.started_at is not None:
        seconds = ((latest.completed_at or utcnow()) - latest.started_at).total_seconds()
        if seconds > 0 and replayed:
            rate = replayed / seconds
    running = latest.status == ResetStatus.IN_PROGRESS
    if running and rate and latest.phase == ResetPhase.REPLAYING_SNAPSHOT:
        eta = round(max(0, snapshot - replayed) / rate)
    return {
        "reset_id": latest.id,
        "status": latest.status,
        "phase": latest.phase,
        "snapshot_records": snapshot,
        "replayed_records": replayed,
        "requested_at": latest.requested_at,
        "started_at": latest.started_at,
        "completed_at": latest.completed_at,
        "attempts": latest.attempts,
        "error": latest.error,
        "percent": percent,
        "rate": rate,
        "eta": eta,
        "running": running,
        "cancellable": resets_service.cancel_refusal(latest, connector) is None,
    }


def _last_delivery(connector: Connector, history: list[Reset]) -> tuple[dt.datetime | None, bool]:
    """When the sink last got records, and whether that was a reset's replay.

    Streamed batches set ``last_delivered_at``; a replay does not, so the
    latest completed reset of the history (newest first) counts as well.
    """
    replayed = next(
        (r.completed_at for r in history if r.status == ResetStatus.COMPLETE and r.completed_at),
        None,
    )
    streamed = connector.last_delivered_at
    if replayed is not None and (streamed is None or replayed > streamed):
        return replayed, True
    return streamed, False


def load_panels(pipeline: Pipeline, connectors: list[Connector]) -> list[dict[str, Any]]:
    """What each connector's panel shows: stats, the latest reset's progress, the history.

    Two statements for the page, whatever its size (log ends, resets).
    """
    ends = _log_ends({c.view_id for c in connectors})
    histories = _histories([c.id for c in connectors])
    shown = []
    for connector in connectors:
        end = ends.get(connector.view_id, 0)
        history = histories.get(connector.id, [])
        last_delivery, by_replay = _last_delivery(connector, history)
        shown.append(
            {
                "view": connector.view,
                "connector": connector,
                "transport": shown_transport(connector),
                "stats": {
                    "health": delivery_service.health(pipeline, connector),
                    "log_end": end,
                    "queued_records": max(0, end - connector.delivered_seq),
                    "last_delivery": last_delivery,
                    "last_delivery_by_replay": by_replay,
                },
                "history": history,
                "progress": _progress(pipeline, connector, history[0] if history else None),
            }
        )
    return shown


def by_view(shown: list[dict[str, Any]]) -> list[tuple[View, list[dict[str, Any]]]]:
    """Group a page's panels under their views (the page is in view order already)."""
    return [
        (group[0]["view"], group)
        for group in (list(g) for _, g in itertools.groupby(shown, key=lambda p: p["view"].id))
    ]


@dataclass
class ViewSummary:
    """A view's connectors as the pipeline list shows them: named if few, counted if many."""

    count: int = 0
    resetting: int = 0
    failed: int = 0
    paused: int = 0
    # Rows of (view_id, name, transport, sync_state, paused), when few enough to name.
    named: list[Any] | None = None


def view_summaries(views: list[View]) -> dict[int, ViewSummary]:
    """Summarise the connectors of these views in two statements, however many they have.

    Counts by state for every view (``COUNT`` … ``GROUP BY``), then the names of
    the connectors of the views that have at most LIST_NAMES_UP_TO.
    """
    summaries = {view.id: ViewSummary() for view in views}
    if not summaries:
        return summaries
    counts = db.session.execute(
        sa.select(Connector.view_id, Connector.sync_state, Connector.paused, sa.func.count())
        .where(Connector.view_id.in_(summaries))
        .group_by(Connector.view_id, Connector.sync_state, Connector.paused)
    ).all()
    for view_id, sync_state, paused, count in counts:
        summary = summaries[view_id]
        summary.count += count
        summary.paused += count if paused else 0
        summary.resetting += count if sync_state == SyncState.RESETTING else 0
        summary.failed += count if sync_state == SyncState.FAILED else 0
    for summary in summaries.values():
        if summary.count <= LIST_NAMES_UP_TO:
            summary.named = []
    few = [view_id for view_id, s in summaries.items() if 0 < s.count <= LIST_NAMES_UP_TO]
    if few:
        named = db.session.execute(
            sa.select(
                Connector.view_id,
                Connector.name,
                Connector.transport,
                Connector.sync_state,
                Connector.paused,
            )
            .where(Connector.view_id.in_(few))
            .order_by(Connector.view_id, Connector.name)
        ).all()
        for row in named:
            summaries[row.view_id].named.append(row)
    return summaries


def is_running(shown: list[dict[str, Any]]) -> bool:
    """Whether a reset is under way on any connector of the page."""
    return any(p["progress"] is not None and p["progress"]["running"] for p in shown)
