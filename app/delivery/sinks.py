"""What the delivery side needs to know of sinks beyond the transport drivers.

A file sink is kept exactly-once: its committed length is recorded with the
delivered offset, and a worker that takes the connector over first cuts the
file back to that length, dropping a batch that was written but never recorded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.transports import TransportError, get_transport

log = logging.getLogger(__name__)


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
        name=connector.name,
        transport=connector.transport,
        config=dict(connector.config),
        view_id=connector.view_id,
        view=ViewRef(view.name, PipelineRef(view.pipeline.name, view.pipeline.tenant)),
    )


def encoded_size(records: Sequence[dict[str, Any]]) -> int:
    """Bytes of the records as JSON lines (what a file sink receives)."""
    return sum(
        len(json.dumps(r, separators=(",", ":"), sort_keys=True).encode("utf-8")) + 1
        for r in records
    )


def sent_size(target: Any, sent: int | None, records: Sequence[dict[str, Any]], grown: int) -> int:
    """Bytes a batch took: as the driver says, else what a file grew by, else its JSON lines."""
    if isinstance(sent, int):
        return sent
    if is_file(target):
        return grown
    return encoded_size(records)


def is_file(connector: Any) -> bool:
    """Tell whether a connector writes to a file sink."""
    return connector.transport == "file"


def file_length(connector: Any) -> int:
    """Return the current length of a file sink (0 when missing, or for other sinks)."""
    if not is_file(connector):
        return 0
    path = get_transport("file").path_of(connector)
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise TransportError(
            f"Cannot read sink file '{connector.config['path']}': {exc.strerror}"
        ) from None


def cut_back(connector: Any, committed_length: int) -> int:
    """Truncate a file sink to its committed length; return the length it has now.

    A file shorter than its committed length was cut by someone else (reset
    the connector to rebuild it); it is left as it is and its length returned,
    so that delivery goes on appending from there.
    """
    if not is_file(connector):
        return committed_length
    length = file_length(connector)
    if length == committed_length:
        return length
    if length < committed_length:
        log.warning(
            "sink file of connector %s is shorter (%d) than delivered (%d); reset it to rebuild",
            connector.id,
            length,
            committed_length,
        )
        return length
    path = get_transport("file").path_of(connector)
    try:
        with open(path, "r+b") as fh:
            fh.truncate(committed_length)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise TransportError(
            f"Cannot truncate sink file '{connector.config['path']}': {exc.strerror}"
        ) from None
    log.info(
        "cut sink file of connector %s back from %d to %d bytes",
        connector.id,
        length,
        committed_length,
    )
    return committed_length
