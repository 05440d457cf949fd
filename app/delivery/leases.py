"""Leases on connectors, with fencing: who may write to a connector's sink right now.

The delivery worker and the reset executor both hold a connector's lease while
they work on its sink, so that one writer at a time touches it, in any number
of processes on any number of hosts. This module is the only place that takes,
renews, checks and gives back a lease.

- A lease is taken with a conditional ``UPDATE`` that also bumps the
  connector's ``lease_epoch``: each holder has an epoch of its own, and a
  larger one than every holder before it.
- Every write a holder makes (an offset, a reset's progress, the switch to a
  new sink file) is a conditional ``UPDATE`` on its epoch, in the transaction
  that commits it. The ``UPDATE`` takes the row lock (PostgreSQL) or the write
  lock (SQLite) first, so no one can take the lease over between the check and
  the commit. A holder that stalled past its lease (SIGSTOP, a long GC or VM
  pause, a slow disk) finds its epoch gone, and its write counts for nothing.
- Lease times come from the database's clock (:func:`app.database.db_time`),
  never a process's own: a host whose clock runs fast cannot take a live lease.
  SQLite's clock is each process's own, though: a process whose clock runs
  fast (or was stepped) writes leases that end too far ahead. No lease can
  rightly end further away than one lease length (:data:`SKEW_MARGIN` aside),
  so one that does counts as run out: a skewed holder cannot keep connectors
  stuck for the length of its skew.
- A held lease keeps the connector's ``due_at`` at the instant it runs out, so
  a holder that dies leaves the connector to be found then; giving the lease
  back says when the connector is due next (:mod:`app.delivery.due`).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from app.connectors.models import Connector
from app.database import begin_alone, db_time, session_busy
from app.extensions import db
from app.transports.base import KeepAlive


class LeaseLost(Exception):
    """The connector (or the reset) is no longer this worker's to work on."""


@dataclass(frozen=True)
class Lease:
    """A connector's lease as its holder knows it: the epoch is its fence."""

    connector_id: int
    owner: str
    epoch: int
    seconds: float
    # The connector's ``wakes`` when the lease was taken: if it moved by the time
    # the lease is given back, an event came in meanwhile (app.delivery.due).
    wakes: int = 0


# When a connector is due after its lease is given back: a SQL time, or None for
# "not until an event marks it". The default, now, lets the next claim decide.
Due = sa.ColumnElement[dt.datetime] | None
NOW = "now"
# Seconds a lease may end beyond one lease length from now (clocks a little apart).
SKEW_MARGIN = 1.0


def lease_bound(seconds: float) -> float:
    """The furthest ahead, in seconds, that a lease of ``seconds`` can rightly end."""
    return float(seconds) + SKEW_MARGIN


def lease_is_free(owner: str, seconds: float) -> sa.ColumnElement[bool]:
    """The condition under which ``owner`` may take a connector's lease (database clock).

    Free, ours, run out, or ending further ahead than a lease of ``seconds``
    can (its holder's clock runs fast).
    """
    return sa.or_(
        Connector.lease_owner.is_(None),
        Connector.lease_owner == owner,
        Connector.lease_expires_at < db_time(),
        Connector.lease_expires_at > db_time(lease_bound(seconds)),
    )


def take(connector_id: int, owner: str, seconds: float, **values: Any) -> Lease | None:
    """Take a connector's lease if it is free, bumping its epoch; the caller commits.

    ``values`` are written to the connector in the same statement. Returns the
    lease, or None when someone else holds it.
    """
    if values:
        statement = _taking(owner, seconds, values)
    else:  # every delivery's claim: its statement is built once per engine, owner and length
        statement = _plain_taking(db.session.get_bind().dialect.name, owner, float(seconds))
    row = db.session.execute(statement, {"taken": connector_id}).one_or_none()
    if row is None:
        return None
    return Lease(connector_id, owner, int(row[0]), seconds, int(row[1]))


def _taking(owner: str, seconds: float, values: dict[str, Any]) -> sa.Update:
    """The ``UPDATE`` of :func:`take`, for the connector bound as ``taken``."""
    return (
        sa.update(Connector)
        .where(Connector.id == sa.bindparam("taken"), lease_is_free(owner, seconds))
        .values(
            lease_owner=owner,
            lease_epoch=Connector.lease_epoch + 1,
            lease_expires_at=db_time(seconds),
            due_at=db_time(seconds),
            # A takeover: another holder's lease ran out without being given back.
            lease_takeovers=Connector.lease_takeovers
            + sa.case(
                (
                    sa.and_(Connector.lease_owner.is_not(None), Connector.lease_owner != owner),
                    1,
                ),
                else_=0,
            ),
            **values,
        )
        .returning(Connector.lease_epoch, Connector.wakes)
        .execution_options(synchronize_session=False)
    )


@functools.lru_cache(maxsize=64)
def _plain_taking(dialect: str, owner: str, seconds: float) -> sa.Update:
    """:func:`_taking` with no values, for ``dialect`` (built in that engine's session)."""
    return _taking(owner, seconds, {})


def held(lease: Lease) -> sa.ColumnElement[bool]:
    """The condition that ``lease`` is still the connector's lease."""
    return sa.and_(
        Connector.id == lease.connector_id,
        Connector.lease_epoch == lease.epoch,
        Connector.lease_owner == lease.owner,
    )


def renew(lease: Lease, added: dict[str, int] | None = None, **values: Any) -> None:
    """Check the lease is still held, renew it and write ``values``; the caller commits.

    This is the fence: the ``UPDATE`` locks the connector's row until the caller
    commits, so nothing done before that commit races with a takeover. Raises
    :class:`LeaseLost` (after a rollback) when the lease is gone.

    ``added`` (``{"transmitted_records": n}``) adds amounts to the connector's
    counters, for a loop's steady writes (a replay's batches): with no
    ``values``, its ``UPDATE`` is built once per engine, lease length and set
    of counters, the lease and the amounts bound.
    """
    if added and not values:
        statement = _renewing(
            db.session.get_bind().dialect.name, float(lease.seconds), tuple(sorted(added))
        )
        params = {"held": lease.connector_id, "held_epoch": lease.epoch, "held_owner": lease.owner}
        params.update((f"added_{name}", amount) for name, amount in added.items())
        result = db.session.execute(statement, params)
    else:
        expires = db_time(lease.seconds)
        counters = {name: getattr(Connector, name) + n for name, n in (added or {}).items()}
        result = db.session.execute(
            sa.update(Connector)
            .where(held(lease))
            .values(**{"lease_expires_at": expires, "due_at": expires, **counters, **values})
            .execution_options(synchronize_session=False)
        )
    if result.rowcount != 1:
        db.session.rollback()
        raise LeaseLost(f"connector {lease.connector_id} (epoch {lease.epoch})")


@functools.lru_cache(maxsize=64)
def _renewing(dialect: str, seconds: float, counters: tuple[str, ...]) -> sa.Update:
    """:func:`renew`'s ``UPDATE`` adding to ``counters``, for ``dialect`` (built in its session)."""
    columns = Connector.__table__.c
    expires = db_time(seconds)
    added = {
        name: columns[name] + sa.bindparam(f"added_{name}", type_=sa.BigInteger)
        for name in counters
    }
    return (
        sa.update(Connector.__table__)
        .where(
            columns.id == sa.bindparam("held"),
            columns.lease_epoch == sa.bindparam("held_epoch"),
            columns.lease_owner == sa.bindparam("held_owner"),
        )
        .values(lease_expires_at=expires, due_at=expires, **added)
    )


def check(lease: Lease) -> None:
    """Check, by a read, that ``lease`` is still the connector's lease, or raise :class:`LeaseLost`.

    For a proof that something done before it (a sink file opened) happened
    while the lease was held: every other holder (a takeover, a reset) commits
    its new epoch before it touches the sink, so one this read does not see
    came after it. The read must see every commit made before it: out of a
    transaction it does (a statement's own snapshot, on either engine). In
    one already open, whose snapshot may be older (SQLite), the lease is
    renewed and committed instead, as :func:`commit` does. It writes nothing,
    so it costs no commit (no disk flush on PostgreSQL), and proves nothing
    about what comes after: writes still go through :func:`renew`.
    """
    if session_busy():
        commit(lease)
        return
    begin_alone()
    found = db.session.execute(sa.select(Connector.id).where(held(lease))).scalar_one_or_none()
    db.session.rollback()
    if found is None:
        raise LeaseLost(f"connector {lease.connector_id} (epoch {lease.epoch})")


def commit(lease: Lease, **values: Any) -> None:
    """Renew the lease, write ``values`` and commit, or raise :class:`LeaseLost`.

    Outside a transaction the ``UPDATE`` is one by itself (:func:`begin_alone`):
    the fence and the write are still one atomic statement.
    """
    begin_alone()
    renew(lease, **values)
    db.session.commit()


def commit_and_release(lease: Lease, due: Due | str = NOW, **values: Any) -> None:
    """Write ``values`` and give the lease back in one statement, committed; or raise LeaseLost.

    A holder's last write and its release at once (see :func:`given_back` for
    ``due``): one fenced ``UPDATE`` (:func:`renew`) where :func:`commit` then
    :func:`release` would take two, each with its commit.
    """
    commit(lease, **given_back(lease, due), **values)


def keep_alive(lease: Lease) -> KeepAlive:
    """Return a callable that renews the lease in a short transaction of its own.

    Transports call it between the attempts of one message, so a long retry
    keeps the lease, and a sender that lost it stops before sending again.
    """

    def renew_now() -> None:
        """Renew the lease (raises :class:`LeaseLost`)."""
        db.session.rollback()
        commit(lease)

    return renew_now


def given_back(lease: Lease, due: Due | str = NOW) -> dict[str, Any]:
    """The connector's values that give ``lease`` back, due next at ``due``.

    ``due`` is the holder's verdict from what it saw: None when it left
    nothing to do, a time for a retry, ``NOW`` to let the next claim decide.
    It holds only if no event marked the connector since the lease was taken
    (``wakes`` unchanged, tested on the row as it is written); otherwise the
    connector is due now. For the caller's ``UPDATE`` of the connector's row.
    """
    now = db_time()
    verdict = now if isinstance(due, str) else (sa.null() if due is None else due)
    return {
        "lease_owner": None,
        "lease_expires_at": now,
        "due_at": sa.case((Connector.wakes == lease.wakes, verdict), else_=now),
    }


def release(
    lease: Lease, due: Due | str = NOW, then: Callable[[], None] | None = None, **values: Any
) -> bool:
    """Give the lease back (if still held), write ``values`` and commit; return whether held.

    ``due``: when the connector has work next, as the holder sees it (see
    :func:`given_back`). ``lease_expires_at`` keeps the release time. Outside
    a transaction the ``UPDATE`` is one by itself (:func:`begin_alone`). ``then``
    runs in the same transaction, only if the lease was still held: what
    tells of the change (an event, :mod:`app.notifications.events`) is
    committed with it, or not at all (so then the ``UPDATE`` opens a transaction).
    """
    if then is None:
        begin_alone()
    result = db.session.execute(
        sa.update(Connector)
        .where(held(lease))
        .values(**given_back(lease, due), **values)
        .execution_options(synchronize_session=False)
    )
    still_held = result.rowcount == 1
    if still_held and then is not None:
        then()
    db.session.commit()
    return still_held
