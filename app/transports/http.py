"""The ``http`` transport: POSTs each message as JSON to a URL.

One message per POST, JSON in UTF-8 (``Content-Type: application/json``). Every
message names its connector twice: ``connector_id``, a UUID that is never
reused (not even by a connector deleted and re-created under the same name),
and ``connector``, its current name; plus the ``pipeline`` and ``view`` names
and the sender's fencing ``epoch``. Headers on every message: ``X-Message-Type``
(``reset``, ``snapshot`` or ``batch``), ``X-Connector-Id`` and ``X-Epoch``;
``X-Batch-Id`` on snapshot and batch messages.

* ``reset``: the connector's sink starts over from a snapshot of the view
  taken at change-log position ``snapshot_seq`` (S)::

    {"type": "reset", "connector_id": "9b1d...", "connector": "hook",
     "pipeline": "orders", "view": "totals", "epoch": 7, "snapshot_seq": 120}

* ``snapshot``: records ``first_seq``..``last_seq`` (1-based positions within
  the snapshot, all inserts) of the snapshot taken at S::

    {"type": "snapshot", ..., "epoch": 7, "snapshot_seq": 120, "first_seq": 1,
     "last_seq": 1000, "batch_id": "9b1d...:snapshot-7:1-1000",
     "records": [{"insert": {...}}, ...]}

* ``batch``: the view's changes at change-log positions ``first_seq``..``last_seq``::

    {"type": "batch", ..., "epoch": 7, "first_seq": 121, "last_seq": 180,
     "batch_id": "9b1d...:121-180", "records": [{"insert": {...}}, {"delete": {...}}]}

A message whose answer was lost is sent again with the same ``first_seq`` and
``last_seq``, also by a sender that took the connector over with a higher
epoch. A batch's ``batch_id`` depends on its range alone; a snapshot's also
names the epoch. Receivers deduplicate by the seqs below, not by ``batch_id``.

The receiver keeps, per ``connector_id``: ``epoch`` (the highest seen; none
before the first message), ``applied_seq`` and ``snapshot_applied`` (both 0
before the first message), and handles each message in this order:

1. ``epoch`` < the stored epoch: drop the message (answer 2xx); it comes from a
   sender that has lost the connector. Otherwise store the message's epoch.
2. ``reset``: drop everything held for this connector; ``applied_seq`` =
   ``snapshot_seq``; ``snapshot_applied`` = 0.
3. ``snapshot``: ``last_seq`` <= ``snapshot_applied`` is a repeat: drop it. Else
   apply its records (``first_seq`` == ``snapshot_applied`` + 1 is guaranteed)
   and set ``snapshot_applied`` = ``last_seq``.
4. ``batch``: ``last_seq`` <= ``applied_seq`` is a repeat: drop it. Else apply
   its records in order (``first_seq`` == ``applied_seq`` + 1 is guaranteed) and
   set ``applied_seq`` = ``last_seq``.

Applying ``{"insert": r}`` adds one copy of ``r``; ``{"delete": r}`` removes one.
A dropped message is answered 2xx like an applied one. A receiver that stores
what it applies and this state in one transaction of its own gets every change
exactly once; otherwise a crash between the two gives at-least-once.

A receiver that finds a batch's ``first_seq`` beyond ``applied_seq`` + 1 has
lost changes it acknowledged (restored from a backup, or started over empty).
It answers ``409`` with ``{"applied_seq": N}``, its own ``applied_seq``, and
applies nothing. The sender then takes the sink as out of sync, as it does a
damaged file sink: the connector reports it (``sync_state`` ``resetting``,
the reason in ``sync_reason``) and a snapshot is redone (``reset``, then the
snapshot, then batches from its position). A ``409`` naming an ``applied_seq``
that is not behind the batch, or answering any other message, is a refusal
like any other ``4xx``.

Any 2xx answer acknowledges a message. Connection errors, timeouts, 408, 429
and 5xx are retried up to ``max_retries`` times with exponential backoff and
jitter (``Retry-After`` is honoured up to the backoff cap). Any other answer
means the receiver refused the message itself: it is not retried and raises a
``TransportError`` with ``poison`` set, naming the status and the first 200
characters of the answer.

Every connection is checked against ``HTTP_SINK_ALLOWED_NETWORKS`` and
``HTTP_SINK_DENIED_NETWORKS`` when it connects (see :mod:`app.transports.destinations`);
a refused destination raises a ``TransportError`` with ``poison`` set ("destination
not allowed"). Everything that goes wrong before an HTTP status arrives reads
alike (``NO_ANSWER``), so that errors do not tell open ports from closed ones.

In an app, each wait of an attempt (to connect, for the answer, reading it) is
cut to a third of the worker's lease (``WORKER_LEASE_SECONDS``), and the sender
renews its lease (``keep_alive``) before every retry and at least that often
while it sleeps between attempts, so a sink that never answers costs one third
of the lease per attempt and cannot outlive the lease it is written under.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import urllib3
from flask import current_app, has_app_context
from requests.adapters import HTTPAdapter

from app.database import utcnow
from app.errors import InvalidRequest
from app.transports.base import KeepAlive, TransportError
from app.transports.destinations import (
    GUARDED_POOLS,
    DestinationNotAllowed,
    attempt_deadline,
    current_policy,
    literal_addresses,
)
from app.transports.http_spec import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_RETRIES,
    DEFAULT_READ_TIMEOUT,
    MAX_BACKOFF,
    MAX_RETRIES,
    MAX_TIMEOUT,
    config_schema,
)
from app.transports.tables import SinkDiverged

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
# Reading a small answer to its end lets the connection go back to the pool.
MAX_ANSWER_BYTES = 64 * 1024
# How much of a refusal's answer an error message quotes (at most 4 bytes a character).
SNIPPET_CHARS = 200
SNIPPET_BYTES = 4 * SNIPPET_CHARS
RETRIED_STATUSES = frozenset({408, 429})
USER_AGENT = "pipeline-manager/0.1"
SETTINGS = ("url", "timeout", "max_retries", "backoff")
# Shown as "***" wherever a URL is shown: its password, and the values of query
# parameters whose names look like they hold a secret.
REDACTED = "***"
SECRET_PARAM = re.compile(
    r"token|secret|pass|pwd|key|auth|sig|credential|session|^code$", re.IGNORECASE
)
# What every failure to get an answer reads as, to callers and in last_error:
# refused, unreachable and silent ports look alike, so the message cannot be used
# to scan the server's network.
NO_ANSWER = "could not connect or got no answer"


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


def _dumps(value: Any) -> str:
    """A message's JSON: compact, UTF-8 as is (the form records are stored in)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _names(target: Any, kind: str, epoch: int) -> dict[str, Any]:
    """The fields that open every message: its type, the connector, view, pipeline and epoch."""
    return {
        "type": kind,
        "connector_id": target.uid,
        "connector": target.name,
        "pipeline": target.view.pipeline.name,
        "view": target.view.name,
        "epoch": epoch,
    }


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


class _Failure(Exception):
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


class HttpTransport:
    """Sends reset, snapshot and batch messages to an HTTP endpoint.

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

        A URL whose host is a denied name or address is refused (400); the
        tenant makes no difference here.
        """
        settings = parse_settings(config)
        try:
            check_destination(settings.url)
        except ValueError:
            raise InvalidRequest(
                "The allowed or denied sink networks are not configured correctly"
            ) from None
        return settings.as_config()

    def shown_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The settings as answers, the CLI and logs show them: the URL's secrets redacted."""
        url = config.get("url")
        return {**config, "url": redact_url(url)} if isinstance(url, str) else dict(config)

    def config_schema(self) -> dict[str, Any]:
        """The settings' JSON schema (:mod:`app.transports.http_spec`)."""
        return config_schema()

    def sink_key(self, config: dict[str, Any], tenant: str) -> None:
        """An URL is no local resource that one connector must own: no key."""
        return None

    def settings_of(self, target: Any) -> HttpSettings:
        """Return a connector's settings (stored ones were validated when it was created)."""
        try:
            return parse_settings(target.config)
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
        # Proxies from the environment are not used: the destination check would
        # see the proxy, not the sink. A CA bundle named there still is.
        session.trust_env = False
        session.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        # Retries are ours (they know Retry-After and the lease), not urllib3's.
        adapter = _GuardedAdapter(
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

    # -- messages -----------------------------------------------------------

    def reset(
        self, target: Any, *, epoch: int, snapshot_seq: int, keep_alive: KeepAlive | None = None
    ) -> int:
        """Send a reset: the receiver drops what it holds and expects the snapshot taken at S.

        Returns the bytes of the body sent; raises ``TransportError`` when the
        receiver cannot be made to take it.
        """
        settings = self.settings_of(target)
        payload = _names(target, "reset", epoch)
        payload["snapshot_seq"] = snapshot_seq
        headers = {
            "X-Message-Type": "reset",
            "X-Connector-Id": target.uid,
            "X-Epoch": str(epoch),
        }
        return self._post(
            settings, _dumps(payload).encode("utf-8"), headers, "the reset", keep_alive
        )

    def send(
        self,
        target: Any,
        records: Sequence[dict[str, Any]],
        *,
        kind: str,
        epoch: int,
        first_seq: int,
        last_seq: int,
        snapshot_seq: int | None = None,
        keep_alive: KeepAlive | None = None,
    ) -> int:
        """POST a batch of changes given as objects; see :meth:`send_changes`."""
        return self.send_changes(
            target,
            [_dumps(record) for record in records],
            kind=kind,
            epoch=epoch,
            first_seq=first_seq,
            last_seq=last_seq,
            snapshot_seq=snapshot_seq,
            keep_alive=keep_alive,
        )

    def send_changes(
        self,
        target: Any,
        changes: Sequence[str],
        *,
        kind: str,
        epoch: int,
        first_seq: int,
        last_seq: int,
        snapshot_seq: int | None = None,
        keep_alive: KeepAlive | None = None,
    ) -> int:
        """POST a batch of changes, or of a reset's snapshot, retrying as configured.

        ``changes`` are the JSON texts of the ``records`` (``{"insert":{...}}``),
        spliced into the body as they are: the delivery worker and the reset
        executor pass stored records' canonical JSON without decoding it.
        ``kind`` is ``"batch"`` (``first_seq``..``last_seq`` are change-log
        positions) or ``"snapshot"`` (they are 1-based positions within the
        snapshot taken at ``snapshot_seq``). Returns the bytes of the body sent.
        """
        settings = self.settings_of(target)
        payload = _names(target, kind, epoch)
        if kind == "batch":
            batch_id = f"{target.uid}:{first_seq}-{last_seq}"
        elif kind == "snapshot":
            if snapshot_seq is None:
                raise ValueError("a snapshot batch needs its snapshot_seq")
            batch_id = f"{target.uid}:snapshot-{epoch}:{first_seq}-{last_seq}"
            payload["snapshot_seq"] = snapshot_seq
        else:
            raise ValueError(f"unknown kind of message: {kind!r}")
        payload["first_seq"] = first_seq
        payload["last_seq"] = last_seq
        payload["batch_id"] = batch_id
        # "records" comes last: the body is the payload's JSON with the changes
        # spliced in, byte for byte what encoding the decoded changes would give.
        body = _dumps(payload)[:-1] + ',"records":[' + ",".join(changes) + "]}"
        headers = {
            "X-Message-Type": kind,
            "X-Connector-Id": target.uid,
            "X-Epoch": str(epoch),
            "X-Batch-Id": batch_id,
        }
        what = "the batch" if kind == "batch" else "the snapshot batch"
        starts_after = first_seq - 1 if kind == "batch" else None
        return self._post(settings, body.encode("utf-8"), headers, what, keep_alive, starts_after)

    # -- sending ------------------------------------------------------------

    def _post(
        self,
        settings: HttpSettings,
        body: bytes,
        headers: dict[str, str],
        what: str,
        keep_alive: KeepAlive | None,
        starts_after: int | None = None,
    ) -> int:
        """POST a message with retries; return the body's size in bytes.

        ``starts_after`` (a batch's ``first_seq`` - 1): a receiver that says it
        holds less than that raises ``SinkDiverged``.
        """
        headers["Content-Type"] = "application/json"
        cap = attempt_cap()
        try:
            current_policy()  # parsed once, here, so that a bad setting is named as such
        except ValueError as exc:
            raise TransportError(f"The sink network settings are not valid: {exc}") from None
        attempt = 0
        while True:
            attempt += 1
            try:
                self._attempt(settings, body, headers, cap)
                return len(body)
            except _Failure as exc:
                failure = exc
            where = safe_url(settings.url)
            behind = failure.behind
            if behind is not None and starts_after is not None and behind < starts_after:
                raise SinkDiverged(
                    f"POST {where}: the receiver holds changes up to position {behind} "
                    f"only, and {what} starts after {starts_after}; it lost changes it "
                    "had acknowledged, so the snapshot is redone"
                )
            if failure.refused:
                raise TransportError(
                    f"POST {where} refused {what}: {failure.reason}", attempts=attempt, poison=True
                )
            if not failure.retryable or attempt > settings.max_retries:
                tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
                raise TransportError(
                    f"POST {where} failed after {tries}: {failure.reason}", attempts=attempt
                )
            delay = backoff_delay(settings, attempt, failure.retry_after)
            log.warning(
                "POST %s: %s%s; retry %d of %d in %.2fs",
                where,
                failure.reason,
                f" ({failure.cause})" if failure.cause else "",
                attempt,
                settings.max_retries,
                delay,
            )
            self._wait(delay, cap, keep_alive)

    @staticmethod
    def _wait(delay: float, cap: float | None, keep_alive: KeepAlive | None) -> None:
        """Sleep before a retry, renewing the lease at least every ``cap`` seconds and at the end.

        Whatever ``keep_alive`` raises (``LeaseLost``) goes up unchanged: the
        sender no longer holds the sink and must not send again.
        """
        if keep_alive is None:
            time.sleep(delay)
            return
        if cap is not None:
            while delay > cap:
                time.sleep(cap)
                delay -= cap
                keep_alive()
        time.sleep(delay)
        keep_alive()

    def _attempt(
        self, settings: HttpSettings, body: bytes, headers: dict[str, str], cap: float | None
    ) -> None:
        """POST once; raise ``_Failure`` unless the receiver answered 2xx."""
        connect, read = settings.connect_timeout, settings.read_timeout
        if cap is not None:
            connect, read = min(connect, cap), min(read, cap)
        started = time.monotonic()
        # The cap bounds the whole attempt, not each wait for bytes: a receiver that
        # drips its headers a byte at a time is cut off at it (attempt_deadline).
        with attempt_deadline(cap) as attempt:
            try:
                response = self.session.post(
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
                raise _Failure(NO_ANSWER, True, cause=cause) from None
            except requests.RequestException as exc:
                if attempt["cut"]:
                    raise _Failure(NO_ANSWER, True, cause="AttemptDeadline") from None
                raise _Failure(f"request failed ({type(exc).__name__})", False) from None
            if attempt["cut"]:
                # Cut before its headers were whole: what the parser made of the part
                # that came is no answer (a retry sends the same message again).
                response.close()
                raise _Failure(NO_ANSWER, True, cause="AttemptDeadline")
            status = response.status_code
            deadline = None if cap is None else started + cap
            try:
                answer = self._read_answer(response, deadline)
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
            raise _Failure(reason, True, retry_after)
        refusal = _Failure(reason, False, refused=True)
        if status == 409:
            refusal.behind = applied_seq_of(answer)
        raise refusal

    @staticmethod
    def _read_answer(response: requests.Response, deadline: float | None) -> bytes:
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
