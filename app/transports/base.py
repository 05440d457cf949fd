"""What every transport driver provides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class TransportError(Exception):
    """The sink could not be acted on; the message is safe to show to operators.

    ``attempts`` is how many times the driver tried before giving up (1 when
    it did not retry), so callers can count retries as well as failures.
    """

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class Transport(Protocol):
    """A transport driver."""

    name: str

    def validate_config(self, config: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Return the normalised settings or raise ``InvalidRequest``.

        ``tenant`` is the pipeline's tenant: a driver that names local resources
        (the file transport's paths) keeps each tenant inside its own space.
        """

    def reset(self, connector: Any) -> None:
        """Ask the sink to reset itself (for a file: leave it empty)."""

    def deliver(
        self, connector: Any, records: Sequence[dict[str, Any]], batch_id: str
    ) -> int | None:
        """Append change records (``{"insert": ...}``/``{"delete": ...}``) to the sink.

        Returns the number of bytes sent to the sink, when the driver knows it.
        """
