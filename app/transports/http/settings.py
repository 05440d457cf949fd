"""An http connector's settings: parsed and checked, and its URL as it may be shown.

What a connector's ``transport.config`` may hold (``url``, ``timeout``,
``max_retries``, ``backoff``; their bounds in :mod:`app.transports.http_spec`),
the check of the URL's host when the connector is created (the one that counts
is made on every connect, :mod:`app.transports.destinations`), and the two
forms a URL is shown in: redacted (settings) and bare (messages and logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from app.errors import InvalidRequest
from app.transports.destinations import current_policy, literal_addresses
from app.transports.http_spec import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_READ_TIMEOUT,
    MAX_BACKOFF,
    MAX_RETRIES,
    MAX_TIMEOUT,
)

MAX_URL_LENGTH = 2048
SETTINGS = ("url", "timeout", "max_retries", "backoff")
# Shown as "***" wherever a URL is shown: its password, and the values of query
# parameters whose names look like they hold a secret.
REDACTED = "***"
SECRET_PARAM = re.compile(
    r"token|secret|pass|pwd|key|auth|sig|credential|session|^code$", re.IGNORECASE
)


@dataclass(frozen=True)
class HttpSettings:
    """The validated settings of an http connector."""

    url: str
    connect_timeout: float
    read_timeout: float
    max_retries: int
    backoff_base: float
    backoff_cap: float

    def as_config(self) -> dict[str, Any]:
        """Return the settings in the stored (normalised) shape."""
        return {
            "url": self.url,
            "timeout": {"connect": self.connect_timeout, "read": self.read_timeout},
            "max_retries": self.max_retries,
            "backoff": {"base": self.backoff_base, "cap": self.backoff_cap},
        }


def _refuse(field: str, message: str, detail: str) -> InvalidRequest:
    return InvalidRequest(message, details={f"transport.config.{field}": [detail]})


def _number(value: Any, field: str, low: float, high: float) -> float:
    """Return ``value`` as a float in ``(low, high]`` or refuse it naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise _refuse(
            field,
            f"The setting '{field}' is out of range",
            f"A number of seconds in ({low}, {high}].",
        )
    return float(value)


def _check_url(url: Any) -> str:
    """Return the URL if it is an http(s) URL with a host, else refuse it."""
    detail = "An http:// or https:// URL with a host is required."
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise _refuse("url", "The http transport needs an http(s) 'url'", detail)
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise _refuse("url", "The URL holds spaces or control characters", detail)
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise _refuse("url", "The URL's port is not valid", "A port in 1-65535.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _refuse("url", "The http transport needs an http(s) 'url'", detail)
    return url


def parse_settings(config: dict[str, Any]) -> HttpSettings:
    """Validate an http connector's settings; raise ``InvalidRequest`` naming the bad field.

    ``timeout`` is seconds for both connecting and reading, or
    ``{"connect": s, "read": s}``; ``backoff`` is ``{"base": s, "cap": s}``.
    """
    if not isinstance(config, dict):
        raise InvalidRequest(
            "The http transport's settings must be an object",
            details={"transport.config": ["An object is required."]},
        )
    unknown = sorted(set(config) - set(SETTINGS))
    if unknown:
        raise InvalidRequest(
            "Unknown settings of the http transport",
            details={"transport.config": [f"Unknown setting '{k}'" for k in unknown]},
        )
    url = _check_url(config.get("url"))

    timeout = config.get("timeout", {})
    if isinstance(timeout, dict):
        extra = sorted(set(timeout) - {"connect", "read"})
        if extra:
            raise _refuse("timeout", "Unknown timeout settings", f"Unknown setting '{extra[0]}'.")
        connect = _number(
            timeout.get("connect", DEFAULT_CONNECT_TIMEOUT), "timeout.connect", 0, MAX_TIMEOUT
        )
        read = _number(timeout.get("read", DEFAULT_READ_TIMEOUT), "timeout.read", 0, MAX_TIMEOUT)
    else:
        connect = read = _number(timeout, "timeout", 0, MAX_TIMEOUT)

    retries = config.get("max_retries", DEFAULT_MAX_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise _refuse(
            "max_retries",
            "The setting 'max_retries' is out of range",
            f"A whole number in [0, {MAX_RETRIES}].",
        )

    backoff = config.get("backoff", {})
    if not isinstance(backoff, dict) or set(backoff) - {"base", "cap"}:
        raise _refuse(
            "backoff", "The setting 'backoff' is not valid", 'An object {"base": s, "cap": s}.'
        )
    base = _number(backoff.get("base", DEFAULT_BACKOFF_BASE), "backoff.base", 0, MAX_BACKOFF)
    cap = _number(backoff.get("cap", max(base, DEFAULT_BACKOFF_CAP)), "backoff.cap", 0, MAX_BACKOFF)
    if cap < base:
        raise _refuse(
            "backoff.cap",
            "The backoff cap is below its base",
            "The cap must be at least the base.",
        )
    return HttpSettings(url, connect, read, retries, base, cap)


def redact_url(url: str) -> str:
    """Return the URL with its password and secret-looking query values replaced by ``***``.

    The user name, host, port, path and the other parameters stay, so that the
    sink can still be recognised. Used wherever a connector's settings are shown.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    if parts.password is not None:
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username}:{REDACTED}@{host}" + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*"
            )
    fragment = REDACTED if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def check_destination(url: str) -> None:
    """Refuse, when a connector is created, a URL whose host is denied without resolving it.

    Only what needs no DNS is checked here (a denied name, an address in any
    spelling); the check that counts is made on every connect.
    """
    host = urlsplit(url).hostname or ""
    policy = current_policy()
    addresses = literal_addresses(host)
    refused = policy.name_refused(host) if addresses is None else not policy.allows(host, addresses)
    if refused:
        raise _refuse(
            "url",
            "The URL's host is not an allowed destination",
            "See HTTP_SINK_ALLOWED_NETWORKS and HTTP_SINK_DENIED_NETWORKS.",
        )


def safe_url(url: str) -> str:
    """Return the URL without credentials, query or fragment, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path or "/", "", ""))
