"""The ``http`` transport: POSTs each batch as JSON to a URL.

Messages (``Content-Type: application/json``, UTF-8), one per POST:

* a batch of changes, header ``X-Batch-Id``::

    {"type": "batch", "connector": "hook", "pipeline": "orders", "view": "totals",
     "batch_id": "...", "records": [{"insert": {...}}, {"delete": {...}}]}

  Delivery is at-least-once: a batch whose answer was lost is sent again with
  the same ``batch_id``, so the receiver drops a batch id it has already applied.

* a reset, header ``X-Message-Type: reset``::

    {"type": "reset", "connector": "hook", "pipeline": "orders", "view": "totals"}

  The receiver drops everything it holds of this connector, the batch ids it
  remembers included, then expects the snapshot batches (all inserts) and the
  changes after them. A reset may arrive twice; doing it again is harmless.

Any 2xx answer acknowledges a message. Connection errors, timeouts, 408, 429
and 5xx are retried with exponential backoff and jitter (``Retry-After`` is
honoured up to the backoff cap), at most ``max_retries`` times and for at most
half the worker's lease (``WORKER_LEASE_SECONDS``); other answers fail at once.
A message that failed raises ``TransportError``; the worker tries it again later.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from flask import current_app, has_app_context
from requests.adapters import HTTPAdapter

from app.database import utcnow
from app.errors import InvalidRequest
from app.transports.base import TransportError

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 10.0
MAX_TIMEOUT = 300.0
MAX_RETRIES = 20
MAX_BACKOFF = 600.0
MAX_URL_LENGTH = 2048
# Answers are not used; reading a little lets the connection go back to the pool.
MAX_ANSWER_BYTES = 64 * 1024
RETRIED_STATUSES = frozenset({408, 429})
USER_AGENT = "pipeline-manager/0.1"
SETTINGS = ("url", "timeout", "max_retries", "backoff")


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


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - utcnow()).total_seconds())


def backoff_delay(settings: HttpSettings, attempt: int, retry_after: float | None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential backoff with "equal jitter" (half fixed, half random) so that
    many connectors failing at once do not retry in lockstep; a ``Retry-After``
    the receiver asked for is honoured, but never beyond the backoff cap.
    """
    ceiling = min(settings.backoff_cap, settings.backoff_base * 2 ** (attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.backoff_cap))
    return delay


def retry_budget() -> float | None:
    """Seconds one message may spend on retries: half the worker's lease, in an app.

    A worker holds a connector (or a reset) by a lease that it renews between
    batches; a batch still being retried when the lease runs out could reach
    the receiver after another worker's newer messages.
    """
    if not has_app_context():
        return None
    return float(current_app.config.get("WORKER_LEASE_SECONDS", 30)) / 2


def _names(connector: Any) -> dict[str, Any]:
    """Return the connector, view and pipeline names that every message carries."""
    view = getattr(connector, "view", None)
    pipeline = getattr(view, "pipeline", None)
    return {
        "connector": connector.name,
        "pipeline": getattr(pipeline, "name", None),
        "view": getattr(view, "name", None),
    }


class _Failure(Exception):
    """One attempt failed; ``retryable`` tells whether another may succeed."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


class HttpTransport:
    """Sends change batches, and reset messages, to an HTTP endpoint.

    One driver object serves a whole process: it keeps one ``requests``
    session (a connection pool per host) shared by all threads, re-created
    after a fork so that processes never share sockets.
    """

    name = "http"

    def __init__(self, pool_size: int = 32) -> None:
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        self._session_pid: int | None = None

    # -- settings -----------------------------------------------------------

    def validate_config(
        self, config: dict[str, Any], *, tenant: str | None = None
    ) -> dict[str, Any]:
        """Check the URL, timeouts, retries and backoff; return them with defaults filled in.

        A URL names nothing local, so the tenant makes no difference here.
        """
        return parse_settings(config).as_config()

    def settings_of(self, connector: Any) -> HttpSettings:
        """Return a connector's settings (stored ones were validated when it was created)."""
        try:
            return parse_settings(connector.config)
        except InvalidRequest as exc:
            raise TransportError(f"The connector's http settings are not valid: {exc}") from None

    # -- the session --------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        """The process's session, created on first use (and again after a fork)."""
        pid = os.getpid()
        if self._session is None or self._session_pid != pid:
            with self._lock:
                if self._session is None or self._session_pid != pid:
                    self._session = self._new_session()
                    self._session_pid = pid
        return self._session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # Retries are ours (they know Retry-After and the batch id), not urllib3's.
        adapter = HTTPAdapter(
            pool_connections=self._pool_size, pool_maxsize=self._pool_size, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # The cookie jar is the one part of a session that is not thread-safe; sinks
        # need no cookies.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        session.headers.update({"User-Agent": USER_AGENT})
        return session

    def close(self) -> None:
        """Close the pooled connections (a new session is made on next use)."""
        with self._lock:
            if self._session is not None:
                self._session.close()
            self._session = None

    # -- sending ------------------------------------------------------------

    def _attempt(self, settings: HttpSettings, body: bytes, headers: dict[str, str]) -> None:
        """POST once; raise ``_Failure`` unless the receiver answered 2xx."""
        try:
            response = self.session.post(
                settings.url,
                data=body,
                headers=headers,
                timeout=(settings.connect_timeout, settings.read_timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.ConnectTimeout:
            raise _Failure("connection timed out", True) from None
        except requests.ReadTimeout:
            raise _Failure("no answer within the read timeout", True) from None
        except requests.ConnectionError:
            raise _Failure("connection failed", True) from None
        except requests.RequestException as exc:
            raise _Failure(f"request failed ({type(exc).__name__})", False) from None
        status = response.status_code
        try:
            # Read (a bounded amount of) the answer so the connection can be reused;
            # its content is never echoed anywhere.
            received = 0
            for chunk in response.iter_content(16 * 1024):
                received += len(chunk)
                if received > MAX_ANSWER_BYTES:
                    break
        except requests.RequestException:
            if 200 <= status < 300:
                return  # the receiver acknowledged before the answer broke off
        finally:
            response.close()
        if 200 <= status < 300:
            return
        if status >= 500 or status in RETRIED_STATUSES:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            raise _Failure(f"the receiver answered HTTP {status}", True, retry_after)
        raise _Failure(f"the receiver answered HTTP {status}", False)

    def _post(
        self, settings: HttpSettings, payload: dict[str, Any], headers: dict[str, str]
    ) -> int:
        """POST a message with retries; return the body's size in bytes."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", **headers}
        budget = retry_budget()
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                self._attempt(settings, body, headers)
                return len(body)
            except _Failure as failure:
                where = safe_url(settings.url)
                delay = backoff_delay(settings, attempt, failure.retry_after)
                # Give up early rather than outlive the worker's lease with a retry in flight.
                worst = time.monotonic() - started + delay + settings.connect_timeout
                out_of_time = budget is not None and worst + settings.read_timeout > budget
                if not failure.retryable or attempt > settings.max_retries or out_of_time:
                    tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
                    raise TransportError(
                        f"POST {where} failed after {tries}: {failure.reason}", attempts=attempt
                    ) from None
                log.warning(
                    "POST %s: %s; retry %d of %d in %.2fs",
                    where,
                    failure.reason,
                    attempt,
                    settings.max_retries,
                    delay,
                )
                time.sleep(delay)

    def reset(self, connector: Any) -> None:
        """Send a reset message: the receiver drops what it holds of this connector."""
        settings = self.settings_of(connector)
        self._post(settings, {"type": "reset", **_names(connector)}, {"X-Message-Type": "reset"})

    def deliver(
        self, connector: Any, records: Sequence[dict[str, Any]], batch_id: str
    ) -> int | None:
        """POST one batch, retrying as configured; return the bytes of the body sent.

        ``batch_id`` lets the receiver drop repeats (delivery is at-least-once).
        """
        settings = self.settings_of(connector)
        payload = {"type": "batch", **_names(connector), "batch_id": batch_id}
        payload["records"] = list(records)
        return self._post(settings, payload, {"X-Batch-Id": batch_id, "X-Message-Type": "batch"})
