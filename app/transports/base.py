"""What every transport driver provides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class TransportError(Exception):
    """The sink could not be acted on; the message is safe to show to operators."""


class Transport(Protocol):
    """A transport driver."""

    name: str

    def validate_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Return the normalised settings or raise ``InvalidRequest``."""

    def reset(self, connector: Any) -> None:
        """Ask the sink to reset itself (for a file: leave it empty)."""

    def deliver(self, connector: Any, records: Sequence[dict[str, Any]], batch_id: str) -> None:
        """Append change records (``{"insert": ...}``/``{"delete": ...}``) to the sink."""
