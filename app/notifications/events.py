"""What the service tells endpoints: the events of resets and connectors, and their data.

The code that changes a reset's or a connector's state calls one of these in
the transaction that makes the change, after its fenced write (so a writer
that lost its lease, and rolls back, tells nothing). Each reads the names it
needs (two or three primary-key reads: these changes are rare) and calls
:func:`app.notifications.service.emit`, which writes nothing for a tenant
without an endpoint subscribed to the event.

The data names the pipeline, view and connector, the reset's id (never its
token) and how it stands, and the reason: never a connector's settings, which
may hold credentials.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from app.connectors.models import Connector
from app.extensions import db
from app.notifications.service import emit
from app.pipelines.models import Pipeline, View
from app.resets.models import Reset


def _connector_data(connector_id: int) -> tuple[str, dict[str, Any]] | None:
    """The connector's tenant, and what an event says of it (None: it is gone)."""
    row = db.session.execute(
        sa.select(
            Connector.tenant,
            Pipeline.name,
            Pipeline.id,
            Pipeline.incarnation,
            View.name,
            Connector.name,
            Connector.uid,
            Connector.transport,
            Connector.sync_state,
        )
        .join(View, View.id == Connector.view_id)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .where(Connector.id == connector_id)
    ).one_or_none()
    if row is None:
        return None
    tenant, pipeline, pipeline_id, incarnation, view, name, uid, transport, sync_state = row
    return tenant, {
        "pipeline_name": pipeline,
        "pipeline_id": pipeline_id,
        "incarnation": incarnation,
        "view_name": view,
        "connector_name": name,
        "connector_id": uid,
        "transport": transport,
        "sync_state": sync_state,
    }


def connector_changed(connector_id: int, event_type: str, reason: str | None) -> None:
    """Emit ``connector.failed`` or ``connector.out_of_sync`` in the caller's transaction."""
    found = _connector_data(connector_id)
    if found is not None:
        tenant, data = found
        emit(tenant, event_type, {**data, "reason": None if reason is None else reason[:1000]})


def later(connector_id: int, event_type: str, reason: str | None) -> Callable[[], None]:
    """:func:`connector_changed`, to be called where the change is written (``leases.release``)."""
    return functools.partial(connector_changed, connector_id, event_type, reason)


def reset_ended(reset_id: uuid.UUID, event_type: str) -> None:
    """Emit ``reset.completed``, ``.failed`` or ``.cancelled`` in the caller's transaction.

    Read after the caller's write: the data says how the reset ended.
    """
    row = db.session.execute(
        sa.select(
            Reset.connector_id,
            Reset.status,
            Reset.phase,
            Reset.origin,
            Reset.attempts,
            Reset.requested_at,
            Reset.started_at,
            Reset.completed_at,
            Reset.snapshot_records,
            Reset.replayed_records,
            Reset.error,
        ).where(Reset.id == reset_id)
    ).one_or_none()
    found = None if row is None else _connector_data(row.connector_id)
    if found is None:
        return
    tenant, data = found
    data = {
        **data,
        "reset_id": reset_id,
        "status": row.status,
        "phase": row.phase,
        "origin": row.origin,
        "attempts": row.attempts,
        "requested_at": row.requested_at,
        "started_at": row.started_at,
        "completed_at": row.completed_at,
        "snapshot_records": row.snapshot_records,
        "replayed_records": row.replayed_records,
        "reason": row.error,
    }
    emit(tenant, event_type, data)
