"""The ``http`` driver: sends reset, snapshot and batch messages, retrying as configured.

What each message holds and how a receiver must handle it is the package's
docstring (:mod:`app.transports.http`); one POST and its answer are
:mod:`app.transports.http.attempt`'s.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import requests

from app.errors import InvalidRequest
from app.transports.base import KeepAlive, TransportError
from app.transports.destinations import current_policy
from app.transports.http.attempt import AttemptFailed, attempt_cap, new_session, post_once
from app.transports.http.settings import (
    HttpSettings,
    check_destination,
    parse_settings,
    redact_url,
    safe_url,
)
from app.transports.http_spec import config_schema
from app.transports.tables import SinkDiverged

log = logging.getLogger("app.transports.http")


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

    # -- the session and one attempt ----------------------------------------

    @property
    def session(self) -> requests.Session:
        """The process's session, created on first use (and again after a fork)."""
        pid = os.getpid()
        if self._session is None or self._session_pid != pid:
            with self._lock:
                if self._session is None or self._session_pid != pid:
                    self._session = new_session(self._pool_size)
                    self._session_pid = pid
        return self._session

    def attempt(
        self, settings: HttpSettings, body: bytes, headers: dict[str, str], cap: float | None
    ) -> None:
        """POST once on the process's session; raise ``AttemptFailed`` unless answered 2xx."""
        post_once(self.session, settings, body, headers, cap)

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
                post_once(self.session, settings, body, headers, cap)
                return len(body)
            except AttemptFailed as exc:
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
