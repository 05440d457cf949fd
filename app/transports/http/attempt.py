"""One POST to a sink and its answer: the session, the attempt, its failures.

The session's connections check their destination when they connect
(:mod:`app.transports.destinations`); an attempt is cut at its cap as a
whole; a bounded part of the answer is read; and every failure to get an
answer reads alike (``NO_ANSWER``). The retries around it are
:class:`~app.transports.http.transport.HttpTransport`'s; notifications use the
attempt on its own (:mod:`app.notifications.delivery`).
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import os
import time
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3
from flask import current_app, has_app_context
from requests.adapters import HTTPAdapter

from app.database import utcnow
from app.transports.base import TransportError
from app.transports.destinations import GUARDED_POOLS, DestinationNotAllowed, attempt_deadline
from app.transports.http.settings import HttpSettings, redact_url, safe_url

# Reading a small answer to its end lets the connection go back to the pool.
MAX_ANSWER_BYTES = 64 * 1024
# How much of a refusal's answer an error message quotes (at most 4 bytes a character).
SNIPPET_CHARS = 200
SNIPPET_BYTES = 4 * SNIPPET_CHARS
RETRIED_STATUSES = frozenset({408, 429})
USER_AGENT = "pipeline-manager/0.1"
# What every failure to get an answer reads as, to callers and in last_error:
# refused, unreachable and silent ports look alike, so the message cannot be used
# to scan the server's network.
NO_ANSWER = "could not connect or got no answer"


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


def attempt_cap() -> float | None:
    """A third of the worker's lease (``WORKER_LEASE_SECONDS``) in an app; None outside one.

    It bounds an attempt's wait to connect, its wait for an answer and its
    reading of the answer, and each stretch of sleep between two lease renewals,
    so a worker renews its lease well before a stuck sink could outlast it.
    """
    if not has_app_context():
        return None
    lease = float(current_app.config["WORKER_LEASE_SECONDS"])
    return lease / 3 if lease > 0 else None


def answer_snippet(body: bytes) -> str:
    """The first characters of a sink's answer, fit for one line of an error message."""
    text = body.decode("utf-8", errors="replace")[:SNIPPET_CHARS]
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def applied_seq_of(answer: bytes) -> int | None:
    """The ``applied_seq`` of a ``{"applied_seq": N}`` answer (N >= 0), or None."""
    try:
        found = json.loads(answer)
    except (ValueError, RecursionError):
        return None
    value = found.get("applied_seq") if isinstance(found, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


class AttemptFailed(Exception):
    """One attempt failed; ``retryable`` tells whether another may succeed."""

    def __init__(
        self,
        reason: str,
        retryable: bool,
        retry_after: float | None = None,
        *,
        refused: bool = False,
        cause: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        # The exception behind a failure to connect, for the log only (operators, not callers).
        self.cause = cause
        self.retryable = retryable
        self.retry_after = retry_after
        # The receiver answered and refused the message itself: sending it again cannot help.
        self.refused = refused
        # A 409's ``applied_seq``: where a receiver that lost changes says it stands.
        self.behind: int | None = None


def _redact_target(value: Any) -> Any:
    """``redact_url`` for a URL or a request target (``/in?token=...``); others unchanged."""
    if not isinstance(value, str) or "?" not in value:
        return value
    if value.startswith("/"):
        return redact_url(f"http://h{value}")[len("http://h") :]
    return redact_url(value) if "://" in value else value


class _RedactingFilter(logging.Filter):
    """Redacts secret query values in urllib3's debug lines (``"POST /in?token=..."``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's string arguments; keep the record."""
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_target(a) for a in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RedactingFilter())


class _GuardedAdapter(HTTPAdapter):
    """An adapter whose connections check their destination when they connect."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Make the pool manager build guarded connection pools."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(GUARDED_POOLS)


def new_session(pool_size: int) -> requests.Session:
    """A session whose connections check their destination, keeping ``pool_size`` per host."""
    session = requests.Session()
    # Proxies from the environment are not used: the destination check would
    # see the proxy, not the sink. A CA bundle named there still is.
    session.trust_env = False
    session.verify = (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
    # Retries are ours (they know Retry-After and the lease), not urllib3's.
    adapter = _GuardedAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # The cookie jar is the one part of a session that is not thread-safe; sinks
    # need no cookies.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.headers.update({"User-Agent": USER_AGENT})
    return session


def post_once(
    session: requests.Session,
    settings: HttpSettings,
    body: bytes,
    headers: dict[str, str],
    cap: float | None,
) -> None:
    """POST once on ``session``; raise ``AttemptFailed`` unless the receiver answered 2xx.

    ``cap`` (seconds, or None) bounds the whole attempt: connecting, the
    wait for the answer and its reading.
    """
    connect, read = settings.connect_timeout, settings.read_timeout
    if cap is not None:
        connect, read = min(connect, cap), min(read, cap)
    started = time.monotonic()
    # The cap bounds the whole attempt, not each wait for bytes: a receiver that
    # drips its headers a byte at a time is cut off at it (attempt_deadline).
    with attempt_deadline(cap) as attempt:
        try:
            response = session.post(
                settings.url,
                data=body,
                headers=headers,
                timeout=(connect, read),
                allow_redirects=False,
                stream=True,
            )
        except DestinationNotAllowed:
            raise TransportError(
                f"POST {safe_url(settings.url)}: destination not allowed", poison=True
            ) from None
        except (requests.Timeout, requests.ConnectionError) as exc:
            # One message for refused, unreachable, timed out and broken off: NO_ANSWER.
            cause = "AttemptDeadline" if attempt["cut"] else type(exc).__name__
            raise AttemptFailed(NO_ANSWER, True, cause=cause) from None
        except requests.RequestException as exc:
            if attempt["cut"]:
                raise AttemptFailed(NO_ANSWER, True, cause="AttemptDeadline") from None
            raise AttemptFailed(f"request failed ({type(exc).__name__})", False) from None
        if attempt["cut"]:
            # Cut before its headers were whole: what the parser made of the part
            # that came is no answer (a retry sends the same message again).
            response.close()
            raise AttemptFailed(NO_ANSWER, True, cause="AttemptDeadline")
        status = response.status_code
        deadline = None if cap is None else started + cap
        try:
            answer = read_answer(response, deadline)
        finally:
            response.close()
    if 200 <= status < 300:
        return
    reason = f"HTTP {status}"
    snippet = answer_snippet(answer)
    if snippet:
        reason = f"{reason}: {snippet}"
    if status >= 500 or status in RETRIED_STATUSES:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        raise AttemptFailed(reason, True, retry_after)
    refusal = AttemptFailed(reason, False, refused=True)
    if status == 409:
        refusal.behind = applied_seq_of(answer)
    raise refusal


def read_answer(response: requests.Response, deadline: float | None) -> bytes:
    """Read a bounded part of the answer, stopping at ``deadline`` (``time.monotonic``).

    Read to its end, the answer lets the connection go back to the pool; the
    start of it says why a receiver refused a message. ``read1`` returns what
    has arrived, so a receiver that trickles its answer cannot hold us.
    """
    raw = response.raw
    read = getattr(raw, "read1", raw.read)
    head = b""
    received = 0
    try:
        while received <= MAX_ANSWER_BYTES:
            if deadline is not None and time.monotonic() > deadline:
                break
            chunk = read(16 * 1024)
            if not chunk:
                break
            received += len(chunk)
            if len(head) < SNIPPET_BYTES:
                head += chunk[: SNIPPET_BYTES - len(head)]
    except (urllib3.exceptions.HTTPError, OSError):
        pass  # the status says what happened; the answer broke off
    return head
