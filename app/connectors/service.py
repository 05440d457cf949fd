"""Output connector work: definitions of a view's connectors."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from app.connectors.models import Connector
from app.database import commit_unique
from app.errors import DuplicateName, UnknownConnector
from app.extensions import db
from app.pipelines.models import Pipeline, View
from app.pipelines.service import get_view, require_stopped
from app.transports import get_transport


def list_connectors(view: View) -> list[Connector]:
    """Return a view's connectors, by name."""
    return list(
        db.session.execute(
            sa.select(Connector).where(Connector.view_id == view.id).order_by(Connector.name)
        ).scalars()
    )


def get_connector(pipeline: Pipeline, view_name: str, connector_name: str) -> Connector:
    """Return a connector or raise ``UnknownView``/``UnknownConnector``."""
    view = get_view(pipeline, view_name)
    connector = db.session.execute(
        sa.select(Connector).where(Connector.view_id == view.id, Connector.name == connector_name)
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
    config = get_transport(transport["name"]).validate_config(
        transport.get("config") or {}, tenant=pipeline.tenant
    )
    connector = Connector(view=view, name=name, transport=transport["name"], config=config)
    db.session.add(connector)
    commit_unique(
        DuplicateName(
            f"View '{view_name}' already has a connector '{name}'",
            details={
                "pipeline_name": pipeline.name,
                "view_name": view_name,
                "connector_name": name,
            },
        )
    )
    return connector


def remove_connector(pipeline: Pipeline, view_name: str, connector_name: str) -> None:
    """Remove an output connector of a stopped pipeline."""
    connector = get_connector(pipeline, view_name, connector_name)
    require_stopped(pipeline, "remove a connector")
    db.session.delete(connector)
    db.session.commit()
