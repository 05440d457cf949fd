"""Delivery statistics of a connector, as the stats route shows them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.connectors.models import Connector, SyncState
from app.connectors.schemas import shown_transport
from app.connectors.service import get_connector
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus
from app.resets.models import Reset
from app.view_data import store


class Health:
    """How a connector's delivery stands."""

    HEALTHY = "healthy"
    FAILING = "failing"
    RESETTING = "resetting"
    FAILED = "failed"
    PAUSED = "paused"
    STOPPED = "stopped"
    ALL = (HEALTHY, FAILING, RESETTING, FAILED, PAUSED, STOPPED)


def health(pipeline: Pipeline, connector: Connector) -> str:
    """Stopped or paused with the pipeline; else how the sink stands.

    Never ``healthy`` unless the sink is in sync: a sink that owes a snapshot is
    ``resetting``, one given up on is ``failed``.
    """
    if pipeline.status == PipelineStatus.STOPPED:
        return Health.STOPPED
    if pipeline.status == PipelineStatus.PAUSED or connector.paused:
        return Health.PAUSED
    if connector.sync_state == SyncState.FAILED:
        return Health.FAILED
    if connector.sync_state == SyncState.RESETTING:
        return Health.RESETTING
    return Health.FAILING if connector.consecutive_failures else Health.HEALTHY


def connector_stats(pipeline: Pipeline, view_name: str, connector_name: str) -> dict[str, Any]:
    """Return what a connector delivered, what waits, its errors and its resets."""
    connector = get_connector(pipeline, view_name, connector_name)
    end = store.log_end(connector.view_id)
    resets = db.session.execute(
        sa.select(sa.func.count()).select_from(Reset).where(Reset.connector_id == connector.id)
    ).scalar_one()
    last = db.session.execute(
        sa.select(Reset)
        .where(Reset.connector_id == connector.id)
        .order_by(Reset.requested_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    return {
        "pipeline_name": pipeline.name,
        "view_name": view_name,
        "connector_name": connector.name,
        "transport": shown_transport(connector),
        "health": health(pipeline, connector),
        "sync_state": connector.sync_state,
        "sync_reason": connector.sync_reason,
        "paused": connector.paused,
        "epoch": connector.lease_epoch,
        "lease_takeovers": connector.lease_takeovers,
        "transmitted_records": connector.transmitted_records,
        "transmitted_bytes": connector.transmitted_bytes,
        "queued_records": max(0, end - connector.delivered_seq),
        "delivered_seq": connector.delivered_seq,
        "log_end": end,
        "transport_errors": connector.transport_errors,
        "consecutive_failures": connector.consecutive_failures,
        "last_error": connector.last_error,
        "last_delivered_at": connector.last_delivered_at,
        "last_error_at": connector.last_error_at,
        "next_attempt_at": connector.next_attempt_at,
        "sink_version": connector.sink_version,
        "resets": {
            "count": resets,
            "completed": connector.resets_completed,
            "failed": connector.resets_failed,
            "cancelled": connector.resets_cancelled,
            "abandoned": connector.resets_abandoned,
            "last_status": last.status if last else None,
            "last_phase": last.phase if last else None,
            "last_requested_at": last.requested_at if last else None,
            "last_completed_at": last.completed_at if last else None,
            "last_origin": last.origin if last else None,
            "last_attempts": last.attempts if last else None,
            "last_error": last.error if last else None,
        },
    }
