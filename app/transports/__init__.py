"""Transport drivers: how an output connector talks to its sink.

A driver validates a connector's settings when the connector is created and
acts on the sink for the reset executor and the delivery worker.
"""

from __future__ import annotations

from app.transports.base import Transport, TransportError
from app.transports.delta import DeltaTransport
from app.transports.file import FileTransport
from app.transports.http import HttpTransport
from app.transports.postgres import PostgresTransport

TRANSPORTS: dict[str, Transport] = {
    t.name: t for t in (FileTransport(), HttpTransport(), PostgresTransport(), DeltaTransport())
}


def get_transport(name: str) -> Transport:
    """Return the driver of a transport name (validated at connector creation)."""
    return TRANSPORTS[name]


__all__ = ["TRANSPORTS", "Transport", "TransportError", "get_transport"]
