"""Leases on connectors: who may write to a connector's sink right now.

The delivery worker and the reset executor both hold a connector's lease
while they write to its sink, so that one writer at a time touches it, in any
number of processes. A lease is taken and renewed with conditional
``UPDATE``s; the ``rowcount`` says whether it worked.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from app.connectors.models import Connector
from app.database import utcnow
from app.extensions import db


class LeaseLost(Exception):
    """The connector (or the reset) is no longer this worker's to work on."""


def lease_is_free(owner: str, now: dt.datetime) -> sa.ColumnElement[bool]:
    """The condition under which ``owner`` may take a connector's lease."""
    return sa.or_(
        Connector.lease_owner.is_(None),
        Connector.lease_owner == owner,
        Connector.lease_expires_at < now,
    )


def take(connector_id: int, owner: str, lease: dt.timedelta) -> bool:
    """Take a connector's lease if it is free; the caller commits. Return whether it did."""
    now = utcnow()
    result = db.session.execute(
        sa.update(Connector)
        .where(Connector.id == connector_id, lease_is_free(owner, now))
        .values(lease_owner=owner, lease_expires_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def update_held(connector_id: int, owner: str, lease: dt.timedelta, **values: Any) -> None:
    """Write connector values if ``owner`` still holds its lease, renewing it; the caller commits.

    Raises :class:`LeaseLost` (after a rollback) when the lease is gone.
    """
    result = db.session.execute(
        sa.update(Connector)
        .where(Connector.id == connector_id, Connector.lease_owner == owner)
        .values(**{"lease_expires_at": utcnow() + lease, **values})
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise LeaseLost(f"connector {connector_id}")


def release(connector_id: int, owner: str, **values: Any) -> None:
    """Give a connector's lease back (if still held) and commit.

    ``lease_expires_at`` keeps the release time: workers serve the connector
    released longest ago first, so one busy connector cannot starve the others.
    """
    db.session.execute(
        sa.update(Connector)
        .where(Connector.id == connector_id, Connector.lease_owner == owner)
        .values(**{"lease_owner": None, "lease_expires_at": utcnow(), **values})
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
