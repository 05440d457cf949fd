"""The ``http`` transport: POSTs each batch as JSON to a URL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import requests

from app.errors import InvalidRequest
from app.transports.base import TransportError

DEFAULT_TIMEOUT = 10.0


class HttpTransport:
    """Sends change batches, and reset messages, to an HTTP endpoint."""

    name = "http"

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Check the URL (http or https, with a host) and the timeout."""
        unknown = sorted(set(config) - {"url", "timeout"})
        if unknown:
            raise InvalidRequest(
                "Unknown settings of the http transport",
                details={"transport.config": [f"Unknown setting '{k}'" for k in unknown]},
            )
        url = config.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(
                "The http transport needs an http(s) 'url'",
                details={"transport.config.url": ["An http:// or https:// URL is required."]},
            )
        timeout = config.get("timeout", DEFAULT_TIMEOUT)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 300
        ):
            raise InvalidRequest(
                "The timeout is out of range",
                details={"transport.config.timeout": ["A number of seconds in (0, 300]."]},
            )
        return {"url": url, "timeout": float(timeout)}

    def _post(self, connector: Any, payload: dict[str, Any]) -> None:
        url = connector.config["url"]
        try:
            response = requests.post(
                url, json=payload, timeout=connector.config.get("timeout", DEFAULT_TIMEOUT)
            )
        except requests.RequestException as exc:
            raise TransportError(f"POST {url} failed: {type(exc).__name__}") from None
        if response.status_code >= 300:
            raise TransportError(f"POST {url} answered {response.status_code}")

    def reset(self, connector: Any) -> None:
        """Send a reset message: the receiver drops what it holds of this connector."""
        self._post(connector, {"type": "reset", "connector": connector.name})

    def deliver(self, connector: Any, records: Sequence[dict[str, Any]], batch_id: str) -> None:
        """POST one batch; ``batch_id`` lets the receiver drop repeats."""
        self._post(
            connector,
            {
                "type": "batch",
                "connector": connector.name,
                "batch_id": batch_id,
                "records": list(records),
            },
        )
