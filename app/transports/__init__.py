"""Transport drivers: how an output connector talks to its sink.

A driver validates a connector's settings when the connector is created and
acts on the sink for the reset executor and the delivery worker.

The registry names each transport's driver by where it lives, with its
settings' schema from a light ``<name>_spec`` module. A driver's module, and
the library it loads (requests, psycopg, deltalake and pyarrow), is imported
when a connector of that kind is first validated or used: the CLI, and a
service that never meets a table sink, start without them.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.transports import delta_spec, file_spec, http_spec, postgres_spec
from app.transports.base import Transport, TransportError


@dataclass(frozen=True)
class TransportSpec:
    """A transport as known before its driver is loaded."""

    name: str
    # "module:Class" of the driver, imported by get_transport on first use.
    driver: str
    config_schema: Callable[[], dict[str, Any]]


TRANSPORTS: dict[str, TransportSpec] = {
    spec.name: spec
    for spec in (
        TransportSpec("file", "app.transports.file:FileTransport", file_spec.config_schema),
        TransportSpec("http", "app.transports.http:HttpTransport", http_spec.config_schema),
        TransportSpec(
            "postgres", "app.transports.postgres:PostgresTransport", postgres_spec.config_schema
        ),
        TransportSpec("delta", "app.transports.delta:DeltaTransport", delta_spec.config_schema),
    )
}

_drivers: dict[str, Transport] = {}
# One driver object per process: the http driver's connection pool is shared.
_loading = threading.Lock()


def get_transport(name: str) -> Transport:
    """Return the driver of a transport name (validated at connector creation).

    The first call for a name imports its driver's module; ``KeyError`` for a
    name the registry does not hold.
    """
    driver = _drivers.get(name)
    if driver is None:
        with _loading:
            driver = _drivers.get(name)
            if driver is None:
                module, _, cls = TRANSPORTS[name].driver.partition(":")
                driver = getattr(importlib.import_module(module), cls)()
                _drivers[name] = driver
    return driver


__all__ = ["TRANSPORTS", "Transport", "TransportError", "TransportSpec", "get_transport"]
