"""Output connector work: definitions of a view's connectors."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from app import quotas
from app.connectors.models import Connector, SyncState
from app.delivery import due, leases
from app.errors import DuplicateName, IllegalConnectorAction, SinkInUse, UnknownConnector
from app.extensions import db
from app.pipelines.models import Pipeline, View, is_valid_name
from app.pipelines.service import get_view, require_stopped
from app.transports import get_transport
from app.transports.tables import is_table_sink
from app.view_data import compaction
from app.view_data.models import ViewLog


def list_connectors(
    view: View, limit: int | None = None, after: str | None = None
) -> list[Connector]:
    """Return a view's connectors by name: at most ``limit``, those named after ``after``."""
    query = sa.select(Connector).where(Connector.view_id == view.id)
    if after is not None:
        query = query.where(Connector.name > after)
    return list(db.session.execute(query.order_by(Connector.name).limit(limit)).scalars())


def get_connector(pipeline: Pipeline, view_name: str, connector_name: str) -> Connector:
    """Return a connector or raise ``UnknownView``/``UnknownConnector``."""
    view = get_view(pipeline, view_name)
    connector = None
    if is_valid_name(connector_name):  # anything else names no connector (see find_pipeline)
        connector = db.session.execute(
            sa.select(Connector).where(
                Connector.view_id == view.id, Connector.name == connector_name
            )
        ).scalar_one_or_none()
    if connector is None:
        raise UnknownConnector(pipeline.name, view_name, connector_name)
    return connector


def add_connector(
    pipeline: Pipeline, view_name: str, name: str, transport: dict[str, Any]
) -> Connector:
    """Add an output connector to a view of a stopped pipeline."""
    view = get_view(pipeline, view_name)
    require_stopped(pipeline, "add a connector")
    quotas.check_connectors(pipeline.tenant)
    driver = get_transport(transport["name"])
    config = driver.validate_config(transport.get("config") or {}, tenant=pipeline.tenant)
    sink_key = driver.sink_key(config, pipeline.tenant)
    connector = Connector(
        view=view,
        tenant=pipeline.tenant,
        name=name,
        transport=transport["name"],
        config=config,
        sink_key=sink_key,
    )
    db.session.add(connector)
    # The unique constraints decide between two requests at once; the answer
    # names whichever was taken.
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        if sink_key is not None and _sink_owner(sink_key) is not None:
            raise _sink_in_use(pipeline, config) from None
        raise DuplicateName(
            f"View '{view_name}' already has a connector '{name}'",
            details={
                "pipeline_name": pipeline.name,
                "view_name": view_name,
                "connector_name": name,
            },
        ) from None
    return connector


def _sink_owner(sink_key: str) -> Connector | None:
    return db.session.execute(
        sa.select(Connector).where(Connector.sink_key == sink_key)
    ).scalar_one_or_none()


def _sink_in_use(pipeline: Pipeline, config: dict[str, Any]) -> SinkInUse:
    # Names only what the caller gave: the other connector may be another pipeline's.
    field = "table" if "table" in config else "path"
    return SinkInUse(
        "Another connector already writes to this sink",
        details={"pipeline_name": pipeline.name, f"transport.config.{field}": config.get(field)},
    )


def remove_connector(pipeline: Pipeline, view_name: str, connector_name: str) -> None:
    """Remove an output connector of a stopped pipeline."""
    connector = get_connector(pipeline, view_name, connector_name)
    require_stopped(pipeline, "remove a connector")
    view_id = connector.view_id
    db.session.delete(connector)
    db.session.commit()
    # The log it held back may have rows to drop now.
    compaction.mark_due(view_id)


def pause_connector(pipeline: Pipeline, view_name: str, connector_name: str) -> Connector:
    """Pause a connector: it keeps its place and streams nothing until started.

    A batch under way finishes (the worker looks between batches); resets still
    run. Pausing a paused connector changes nothing.
    """
    return _set_paused(get_connector(pipeline, view_name, connector_name), True)


def _set_paused(connector: Connector, paused: bool) -> Connector:
    """Pause or unpause a connector (no lease needed: the worker reads it between batches)."""
    db.session.execute(
        sa.update(Connector)
        .where(Connector.id == connector.id)
        .values(paused=paused)
        .execution_options(synchronize_session=False)
    )
    if not paused:
        due.mark_connector(connector.id)  # what it owes can go now
    db.session.commit()
    db.session.refresh(connector)
    return connector


def start_connector(
    pipeline: Pipeline, view_name: str, connector_name: str, skip: bool = False
) -> Connector:
    """Start a paused connector where it stopped, or, with ``skip``, at the log's end now.

    Skipping moves the connector's position past what was produced meanwhile:
    the sink never gets those changes (a reset brings it back in line). The
    move takes the connector's lease (bumping its fencing epoch, so a worker
    still finishing a batch cannot write its older position back) and answers
    409 ``IllegalConnectorAction`` while a worker holds it, or while the sink
    owes a snapshot.
    """
    connector = get_connector(pipeline, view_name, connector_name)
    if not skip:
        return _set_paused(connector, False)
    if connector.sync_state != SyncState.IN_SYNC:
        raise IllegalConnectorAction(
            f"Connector '{connector_name}' owes its sink a snapshot ({connector.sync_state}); "
            "start it without skip",
            details={"reason": "not_in_sync", "sync_state": connector.sync_state},
        )
    log_end = sa.func.coalesce(
        sa.select(ViewLog.last_seq).where(ViewLog.view_id == Connector.view_id).scalar_subquery(),
        0,
    )
    moved: dict[str, Any] = {
        "delivered_seq": sa.case(
            (log_end > Connector.delivered_seq, log_end), else_=Connector.delivered_seq
        )
    }
    if is_table_sink(get_transport(connector.transport)):
        # Where the skip started (the earliest, if skips pile up): a table sink,
        # which records its own position, records the same skip before its next
        # batch (app.delivery.worker).
        moved["skipped_from"] = sa.case(
            (
                log_end > Connector.delivered_seq,
                sa.func.coalesce(Connector.skipped_from, Connector.delivered_seq),
            ),
            else_=Connector.skipped_from,
        )
    lease = leases.take(
        connector.id,
        f"api-start:{uuid.uuid4().hex[:12]}",
        float(current_app.config["WORKER_LEASE_SECONDS"]),
        paused=False,
        inflight_first_seq=None,
        inflight_last_seq=None,
        **moved,
    )
    if lease is None:
        db.session.rollback()
        raise IllegalConnectorAction(
            f"Connector '{connector_name}' is finishing a batch; retry in a moment",
            details={"reason": "busy"},
            headers={"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])},
        )
    leases.release(lease)
    db.session.refresh(connector)
    return connector
