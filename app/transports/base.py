"""What every transport driver provides, and the errors they raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

# Called by a driver before each retry (and during long waits) of one message:
# it renews the sender's lease and raises ``LeaseLost`` when the lease is gone,
# so a sender that lost its sink stops at once instead of sending again.
KeepAlive = Callable[[], None]


class TransportError(Exception):
    """The sink could not be acted on; the message is safe to show to operators.

    ``attempts`` is how many times the driver tried before giving up (1 when
    it did not retry), so callers can count retries as well as failures.
    ``poison`` is true when the sink refused the message itself (an http 4xx
    other than 408/429): sending the same message again cannot succeed.
    """

    def __init__(self, message: str, *, attempts: int = 1, poison: bool = False) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.poison = poison


class Transport(Protocol):
    """A transport driver: validates a connector's settings when it is created."""

    name: str

    def validate_config(self, config: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Return the normalised settings or raise ``InvalidRequest``.

        ``tenant`` is the pipeline's tenant: a driver that names local resources
        (the file transport's paths) keeps each tenant inside its own space.
        """

    def sink_key(self, config: dict[str, Any], tenant: str) -> str | None:
        """The identity of the sink that only one connector may write, or None.

        A file sink's key is its resolved path: two connectors whose paths
        resolve to one file cannot both exist (409 ``SinkInUse``).
        """

    def config_schema(self) -> dict[str, Any]:
        """The settings' JSON schema (OpenAPI 3.0), as its ``<name>_spec`` module gives it.

        The OpenAPI document reads it from there (``TRANSPORTS``), without this driver.
        """

    def shown_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The settings as answers, the CLI and logs show them, secrets replaced by ``***``.

        The stored settings keep the real values; only what is shown is redacted.
        """
