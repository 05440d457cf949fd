"""Request and response shapes of output connectors."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from app.pipelines.schemas import name_field
from app.schemas import PageQuery, StrictBoolean
from app.transports import TRANSPORTS, get_transport


class TransportIn(ma.Schema):
    """Which transport a connector uses, and its settings."""

    class Meta:
        unknown = ma.RAISE

    name = ma.fields.String(
        required=True,
        validate=validate.OneOf(sorted(TRANSPORTS)),
        metadata={"enum": sorted(TRANSPORTS), "example": "file"},
    )
    config = ma.fields.Dict(
        keys=ma.fields.String(),
        required=True,
        metadata={
            "description": 'file: {"path": "out/totals.jsonl"}; '
            'http: {"url": "http://127.0.0.1:9000/in", "timeout": 10}; '
            'postgres: {"dsn_env": "SINK_DSN_WAREHOUSE", "table": "analytics.totals"}; '
            'delta: {"path": "tables/totals"}',
            "example": {"path": "out/totals.jsonl"},
        },
    )


class ConnectorCreate(ma.Schema):
    """Body of ``POST .../views/{view_name}/connectors``."""

    class Meta:
        unknown = ma.RAISE

    name = name_field(required=True, metadata={"example": "sink1"})
    transport = ma.fields.Nested(TransportIn, required=True)


class TransportOut(ma.Schema):
    """A connector's transport."""

    name = ma.fields.String(required=True)
    config = ma.fields.Dict(required=True)


def shown_transport(connector: Any) -> dict[str, Any]:
    """A connector's transport as it is shown: secrets in its settings replaced by ``***``."""
    driver = get_transport(connector.transport)
    return {"name": connector.transport, "config": driver.shown_config(connector.config)}


class ConnectorOut(ma.Schema):
    """An output connector as the API shows it (secrets in its settings redacted)."""

    name = ma.fields.String(required=True)
    pipeline_name = ma.fields.Function(lambda c: c.view.pipeline.name, required=True)
    view_name = ma.fields.Function(lambda c: c.view.name, required=True)
    transport = ma.fields.Function(shown_transport, required=True)
    created_at = ma.fields.AwareDateTime(required=True)
    paused = ma.fields.Boolean(
        required=True,
        metadata={
            "description": "Paused by an operator: it keeps its place and streams nothing "
            "until started (resets still run)."
        },
    )


class ConnectorStart(ma.Schema):
    """Body of ``POST .../connectors/{connector_name}/start`` (optional)."""

    class Meta:
        unknown = ma.RAISE

    skip = StrictBoolean(
        load_default=False,
        metadata={
            "description": "Start at the change log's end now, skipping what was produced "
            "while the connector was paused: the sink never gets those changes (a reset "
            "brings it back in line). Default: resume exactly where it stopped."
        },
    )


class ConnectorListQuery(PageQuery):
    """Query of ``GET .../connectors``: a page of a view's connectors, by name."""

    after = name_field(
        metadata={
            "description": "List the connectors named after this one (the previous page's last)."
        }
    )
