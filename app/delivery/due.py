"""The due index: which connectors have work, and from when, found without scanning.

A connector is *due* when it may have work: changes past its position to
deliver, a reset to run, a snapshot owed, a retry whose time has come, a lease
that ran out. ``connectors.due_at`` says from when (database clock); NULL means
nothing to do until something happens. A partial index on ``(tenant, due_at)``
holds only the connectors that have a ``due_at``, so finding work costs a few
index probes, whatever the number of idle connectors (``make bench-scale``
measures the idle service at 100,000 of them).

Who writes ``due_at``:

- **an event marks** the connectors it may give work (:func:`mark_view`,
  :func:`mark_pipeline`, :func:`mark_connector`), in the transaction that makes
  the event: a push marks its view's connectors, a start or resume its
  pipeline's, a reset request or a connector's start that connector. A mark
  makes a connector due now (one whose lease is held stays due when the lease
  runs out) and bumps its ``wakes``;
- **a lease** sets ``due_at`` to when it runs out, at every take and renewal
  (:mod:`app.delivery.leases`): a holder that dies leaves its connector due
  at the instant another worker may take it over;
- **whoever ends a piece of work** sets the next ``due_at`` from what it saw
  (:func:`settle`, ``leases.release``): NULL, a retry time, or now. It does so
  only if ``wakes`` has not moved since it looked; otherwise an event came in
  meanwhile, and the connector stays due now. That test sits on the
  connector's own row, in the ``UPDATE`` that writes ``due_at``, so no event is
  lost on either engine: PostgreSQL evaluates the condition again on the row a
  concurrent event wrote, after waiting for it; SQLite has one writer at a time.

Work is taken tenant by tenant (:func:`due_tenants`, then :func:`candidates`
of one tenant, oldest first), so one tenant's backlog waits its turn behind
nobody else's, and a connector that just became due queues behind its
tenant's older work.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app.connectors.models import Connector, SyncState
from app.database import begin_alone, db_time, notify_work, of_each_tenant, tenants_with
from app.delivery import leases, wake
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetStatus
from app.view_data.models import ViewLog

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    """What a connector has to do now."""

    DELIVER = "deliver"
    # A reset of the live incarnation to run (``Work.reset_id``).
    RESET = "reset"
    # A snapshot owed with no reset to make it: one is queued (origin "redo").
    REDO = "redo"
    # Nothing now (``Work.next_due``: when, if ever, to look again).
    NONE = "none"
    # Someone holds its lease: the holder decides what comes next.
    HELD = "held"


@dataclass(frozen=True)
class Work:
    """What one connector has to do, as one read saw it."""

    connector_id: int
    tenant: str
    kind: Kind
    wakes: int
    next_due: dt.datetime | None = None
    reset_id: uuid.UUID | None = None


# Statements of the hot paths (a push's mark, the poller's rounds), built once per engine
# (they read its clock): building the poller's recursive query anew at every round cost
# more than running it, and building a push's mark about as much as the push's statements.
_statements: dict[tuple[str, str], Any] = {}


def _statement(name: str, build: Callable[[], Any]) -> Any:
    """The statement ``name`` for the session's engine, built on first use."""
    key = (name, db.session.get_bind().dialect.name)
    statement = _statements.get(key)
    if statement is None:
        statement = _statements[key] = build()
    return statement


def held() -> sa.ColumnElement[bool]:
    """A connector's lease is held and has not run out (database clock)."""
    return sa.and_(Connector.lease_owner.is_not(None), Connector.lease_expires_at > db_time())


def _marked_due_at() -> sa.ColumnElement:
    """``due_at`` after a mark: now, or when the lease runs out while one is held."""
    now = db_time()
    return sa.case(
        (held(), Connector.lease_expires_at),
        (sa.or_(Connector.due_at.is_(None), Connector.due_at > now), now),
        else_=Connector.due_at,
    )


def _in_id_order(where: Callable[[sa.TableClause], sa.ColumnElement[bool]]) -> sa.ColumnElement:
    """Connectors that ``where(table)`` holds, their rows locked in id order first (PostgreSQL).

    Every statement that writes several connectors' rows takes their locks in
    id order (this, and :func:`settle_all`'s sorted batch): two of them at
    once then wait for each other instead of each holding a row the other
    wants. A pipeline's resume (every connector of it marked) beside the
    poller settling a batch of its connectors deadlocked that way, and
    PostgreSQL failed one of them (the resume answered 503). SQLite has one
    writer at a time and renders no ``FOR UPDATE``.
    """
    return Connector.id.in_(_ids_locked_in_order(where))


def lock_in_id_order(where: Callable[[sa.TableClause], sa.ColumnElement[bool]]) -> None:
    """Lock the connectors ``where(table)`` holds, in id order, in the caller's transaction.

    For a transaction that then writes their rows in several statements (a
    pipeline's stop): each statement's own locks would come in its own order,
    and one statement's rows would be held while the next waits for others.
    """
    db.session.execute(_ids_locked_in_order(where)).all()


def _ids_locked_in_order(where: Callable[[sa.TableClause], sa.ColumnElement[bool]]) -> sa.Select:
    """The ids of the connectors ``where(table)`` holds, sorted, their rows locked as they come."""
    locked = Connector.__table__.alias("locked")
    return sa.select(locked.c.id).where(where(locked)).order_by(locked.c.id).with_for_update()


def _mark(
    name: str, where: Callable[[sa.TableClause], sa.ColumnElement[bool]], **params: Any
) -> int:
    """Mark the connectors ``where(table)`` holds due, in the caller's transaction; return how many.

    Every row that matches is written, even one already due: its ``wakes``
    moves, which is what tells a worker deciding "nothing to do" that it must
    look again. Other processes' workers are told at commit (``NOTIFY`` on
    PostgreSQL; SQLite's other connections see the file change), this one's
    through its doorbell. The rows are locked in id order (:func:`_in_id_order`).
    The statement is built once (every push runs one): ``where`` takes its
    values from ``params`` as bound parameters.
    """
    statement = _statement(
        name,
        lambda: (
            sa.update(Connector)
            .where(_in_id_order(where))
            .values(wakes=Connector.wakes + 1, due_at=_marked_due_at())
            .execution_options(synchronize_session=False)
        ),
    )
    result = db.session.execute(statement, params)
    if result.rowcount:
        notify_work()
        wake.ring_after_commit()
    return result.rowcount


def mark_view(view_id: int) -> int:
    """Mark a view's connectors due (a push added changes); return how many it has."""
    return _mark(
        "mark_view",
        lambda table: table.c.view_id == sa.bindparam("marked_view"),
        marked_view=view_id,
    )


def mark_pipeline(pipeline_id: uuid.UUID) -> int:
    """Mark every connector of a pipeline due (it starts or resumes)."""

    def where(table: sa.TableClause) -> sa.ColumnElement[bool]:
        views = sa.select(View.id).where(View.pipeline_id == sa.bindparam("marked_pipeline"))
        return table.c.view_id.in_(views.scalar_subquery())

    return _mark("mark_pipeline", where, marked_pipeline=pipeline_id)


def mark_connector(connector_id: int) -> int:
    """Mark one connector due (a reset requested, the connector started)."""
    return _mark(
        "mark_connector",
        lambda table: table.c.id == sa.bindparam("marked_connector"),
        marked_connector=connector_id,
    )


# -- what a connector has to do ----------------------------------------------------------------


def _live_reset(column: sa.ColumnElement) -> sa.ScalarSelect:
    """``column`` of the connector's oldest reset in progress in its live incarnation."""
    return (
        sa.select(column)
        .where(
            Reset.connector_id == Connector.id,
            Reset.status == ResetStatus.IN_PROGRESS,
            Reset.incarnation == Pipeline.incarnation,
        )
        .order_by(Reset.requested_at, Reset.id)
        .limit(1)
        .correlate(Connector, Pipeline)
        .scalar_subquery()
    )


def _work_query() -> sa.Select:
    return (
        sa.select(
            Connector.id,
            Connector.tenant,
            Connector.wakes,
            Connector.sync_state,
            Connector.paused,
            Connector.delivered_seq,
            Connector.next_attempt_at,
            Connector.lease_owner,
            Connector.lease_expires_at,
            Pipeline.status,
            ViewLog.last_seq,
            _live_reset(Reset.id),
            _live_reset(Reset.next_attempt_at),
            db_time(),
        )
        .select_from(Connector)
        .join(View, View.id == Connector.view_id)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .outerjoin(ViewLog, ViewLog.view_id == Connector.view_id)
        .where(Connector.id.in_(sa.bindparam("ids", expanding=True)))
    )


def _as_utc(value: dt.datetime | str | None) -> dt.datetime | None:
    """A timestamp read through a scalar subquery (SQLite hands those back as text)."""
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


def work_of(connector_id: int, lease_seconds: float | None = None) -> Work | None:
    """Read what a connector has to do now (None: it is gone). Ends the read transaction.

    A lease that ends further ahead than one of ``lease_seconds`` can (default
    ``WORKER_LEASE_SECONDS``) is not held: its holder's clock runs fast (said
    in the log once per such lease).
    """
    found = works_of([connector_id], lease_seconds)
    return found[0] if found else None


def works_of(connector_ids: list[int], lease_seconds: float | None = None) -> list[Work]:
    """What each of these connectors has to do now, in their order (gone ones left out).

    One read for them all; ends the read transaction. See :func:`work_of`.
    """
    if not connector_ids:
        return []
    query = _statement("work", _work_query)
    begin_alone()
    rows = {row[0]: row for row in db.session.execute(query, {"ids": list(connector_ids)})}
    db.session.rollback()
    seconds = lease_seconds or float(current_app.config["WORKER_LEASE_SECONDS"])
    return [_judge(rows[i], seconds) for i in connector_ids if i in rows]


def _judge(row: sa.Row, lease_seconds: float) -> Work:
    """What one connector has to do, from its row of :func:`_work_query`."""
    (
        connector_id,
        tenant,
        wakes,
        sync_state,
        paused,
        delivered_seq,
        next_attempt_at,
        lease_owner,
        lease_expires_at,
        status,
        last_seq,
        reset_id,
        reset_next,
        now,
    ) = row
    reset_next = _as_utc(reset_next)

    def work(kind: Kind, next_due: dt.datetime | None = None, reset: object = None) -> Work:
        return Work(connector_id, tenant, kind, wakes, next_due, _as_uuid(reset))

    if lease_owner is not None and lease_expires_at is not None and lease_expires_at > now:
        ahead = (lease_expires_at - now).total_seconds()
        if ahead <= leases.lease_bound(lease_seconds):
            return work(Kind.HELD, lease_expires_at)
        log.warning(
            "connector %s: its lease, held by %s, ends %.0f s from now, further than a lease "
            "can (%s s): that process's clock runs fast; the lease counts as run out",
            connector_id,
            lease_owner,
            ahead,
            lease_seconds,
        )
    if status != PipelineStatus.RUNNING:
        return work(Kind.NONE)  # a start or resume marks it again
    if reset_id is not None:
        if reset_next is not None and reset_next > now:
            return work(Kind.NONE, reset_next)
        return work(Kind.RESET, reset=reset_id)
    if sync_state == SyncState.RESETTING:
        if next_attempt_at is not None and next_attempt_at > now:
            return work(Kind.NONE, next_attempt_at)  # a redo backing off: not before then
        return work(Kind.REDO)
    if sync_state != SyncState.IN_SYNC or paused:
        return work(Kind.NONE)  # a reset, or the connector's start, marks it again
    if delivered_seq < (last_seq or 0):
        if next_attempt_at is not None and next_attempt_at > now:
            return work(Kind.NONE, next_attempt_at)
        return work(Kind.DELIVER)
    return work(Kind.NONE)  # the next push marks it again


def _as_uuid(value: object) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value  # type: ignore[return-value]
    return uuid.UUID(str(value))


def _settle_statement() -> sa.Update:
    return (
        sa.update(Connector)
        .where(
            Connector.id == sa.bindparam("cid"),
            Connector.wakes == sa.bindparam("seen"),
            ~held(),
        )
        .values(due_at=sa.bindparam("next_due", type_=Connector.due_at.type))
        .execution_options(synchronize_session=False)
    )


def settle(work: Work) -> bool:
    """Record that a connector has nothing to do before ``work.next_due``; commit.

    Written only if no event marked it since ``work`` was read (its ``wakes``
    is unchanged) and no one holds its lease; return whether it was.
    """
    params = {"cid": work.connector_id, "seen": work.wakes, "next_due": work.next_due}
    begin_alone()
    result = db.session.execute(_statement("settle", _settle_statement), params)
    db.session.commit()
    return result.rowcount == 1


def settle_all(works: list[Work]) -> None:
    """:func:`settle` each of ``works``, in one transaction (one ``executemany``)."""
    if not works:
        return
    # On the session's connection (Core), not through the ORM, whose bulk UPDATE of a
    # list would want primary keys by name.
    # In connector id order, as every write of several connectors' rows (see _in_id_order).
    db.session.connection().execute(
        _statement("settle", _settle_statement),
        [
            {"cid": w.connector_id, "seen": w.wakes, "next_due": w.next_due}
            for w in sorted(works, key=operator.attrgetter("connector_id"))
        ],
    )
    db.session.commit()


# -- finding work -------------------------------------------------------------------------------


def horizon() -> float:
    """Seconds ahead beyond which no due time is right (a lease, a retry): a fast clock wrote it.

    SQLite's clock is each process's own: a process whose clock runs fast
    writes lease ends and retry times too far ahead. Those connectors are due
    now, not when that clock says (see ``app.delivery.leases``).
    """
    config = current_app.config
    longest = max(
        float(config["WORKER_LEASE_SECONDS"]), float(config["DELIVERY_RETRY_MAX_SECONDS"])
    )
    return leases.lease_bound(longest)


@dataclass(frozen=True)
class DueTenant:
    """A tenant with due connectors: its earliest and latest due times, and the database's now."""

    tenant: str
    next_due: dt.datetime
    now: dt.datetime
    latest: dt.datetime | None = None
    beyond: float = float("inf")

    @property
    def skewed(self) -> bool:
        """Whether some of its due times lie further ahead than any can rightly be."""
        return self.latest is not None and (self.latest - self.now).total_seconds() > self.beyond

    @property
    def ready(self) -> bool:
        """Whether some of its connectors are due now."""
        return self.next_due <= self.now or self.skewed


def _due_tenants_query() -> sa.Select:
    """Each tenant with due connectors and its earliest ``due_at``: a skip scan of the index.

    A recursive query steps from one tenant to the next through the partial
    index (one probe each), then reads each one's earliest entry: the cost
    grows with the tenants that have work, never with idle connectors.
    """
    due_at = Connector.__table__.c.due_at
    tenants = tenants_with(due_at, "due_tenants")
    earliest = of_each_tenant(due_at, tenants, sa.func.min, "head")
    latest = of_each_tenant(due_at, tenants, sa.func.max, "tail")
    return sa.select(tenants.c.tenant, earliest, latest, db_time()).where(
        tenants.c.tenant.is_not(None)
    )


def due_tenants() -> list[DueTenant]:
    """The tenants that have due connectors, now or later; ends the read transaction."""
    begin_alone()
    rows = db.session.execute(_statement("due_tenants", _due_tenants_query)).all()
    db.session.rollback()
    beyond = horizon()
    return [
        DueTenant(tenant, _as_utc(next_due), _as_utc(now), _as_utc(latest), beyond)  # type: ignore[arg-type]
        for tenant, next_due, latest, now in rows
        if next_due is not None
    ]


def _candidates_query() -> sa.Select:
    return (
        sa.select(Connector.id)
        .where(
            Connector.tenant == sa.bindparam("tenant"),
            Connector.due_at.is_not(None),
            Connector.due_at <= db_time(),
        )
        .order_by(Connector.due_at)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )


def candidates(tenant: str, limit: int, skewed: bool = False) -> list[int]:
    """A tenant's connectors due now, longest due first (at most ``limit``).

    With ``skewed`` (see :class:`DueTenant`), also those whose due time lies
    further ahead than any can rightly be.
    """
    params = {"tenant": tenant, "limit": limit}
    begin_alone()
    ids = list(db.session.execute(_statement("candidates", _candidates_query), params).scalars())
    if skewed and len(ids) < limit:
        base = sa.select(Connector.id).where(
            Connector.tenant == tenant, Connector.due_at.is_not(None)
        )
        far = base.where(Connector.due_at > db_time(horizon())).order_by(Connector.due_at)
        ids += db.session.execute(far.limit(limit - len(ids))).scalars()
    db.session.rollback()
    return ids


def in_turn(limit: int) -> list[int]:
    """Up to ``limit`` connectors due now, taking the tenants in turn (one each, then again)."""
    ready = [t for t in due_tenants() if t.ready]
    per_tenant = {t.tenant: candidates(t.tenant, limit, t.skewed) for t in ready}
    ready = [t.tenant for t in ready]  # type: ignore[misc]
    found: list[int] = []
    for turn in range(limit):
        for tenant in ready:
            ids = per_tenant[tenant]
            if turn < len(ids) and len(found) < limit:
                found.append(ids[turn])
    return found
