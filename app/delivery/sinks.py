"""What the delivery side reads of a connector to act on its sink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PipelineRef:
    """The pipeline's name (as messages to sinks carry it) and tenant (where its files live)."""

    name: str
    tenant: str


@dataclass(frozen=True)
class ViewRef:
    """The view's name and pipeline, as messages to sinks carry them."""

    name: str
    pipeline: PipelineRef


@dataclass(frozen=True)
class SinkTarget:
    """What a transport driver reads of a connector, copied out of the database session.

    Drivers get this instead of the ORM object, so talking to a sink never
    loads anything from the database (nor holds a transaction open meanwhile).
    """

    id: int
    uid: str
    name: str
    transport: str
    config: dict[str, Any]
    view_id: int
    view: ViewRef


def target_of(connector: Any) -> SinkTarget:
    """Copy what the transports need out of a connector."""
    view = connector.view
    return SinkTarget(
        id=connector.id,
        uid=str(connector.uid),
        name=connector.name,
        transport=connector.transport,
        config=dict(connector.config),
        view_id=connector.view_id,
        view=ViewRef(view.name, PipelineRef(view.pipeline.name, view.pipeline.tenant)),
    )


def is_file(connector: Any) -> bool:
    """Tell whether a connector writes to a file sink."""
    return connector.transport == "file"
