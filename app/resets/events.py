"""A reset's progress as Server-Sent Events: ``reset_status`` asked for ``text/event-stream``.

The stream sends the same JSON as the plain answer, as ``status`` events:
the first at once, then one whenever the reset moves (its phase, status,
attempts, or the records replayed: at most one a poll, every
``EVENT_STREAM_POLL_SECONDS``), and it ends after the final status
(``complete``, ``failed``, ``cancelled``). A reset that can no longer be
answered (the pipeline stopped or restarted) ends it with an ``error`` event
carrying the error body the plain route would answer.

- Each event's id names the state it carries; a client that reconnects with
  ``Last-Event-ID`` gets no event for a state it has seen.
- Comment lines every ``EVENT_STREAM_HEARTBEAT_SECONDS`` keep proxies (and
  their idle timeouts) from closing a quiet stream, and find out a client
  that went away (the write fails and the stream ends).
- A stream lasts at most ``EVENT_STREAM_MAX_SECONDS``; the client reconnects
  (EventSource does so by itself, sending ``Last-Event-ID``).
- Each stream holds a request thread, so each process serves at most
  ``EVENT_STREAMS_PER_PROCESS`` at once; beyond, 503 ``ServiceUnavailable``
  with ``Retry-After``. Between polls a stream holds no database connection:
  its session is given back after each read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, request, stream_with_context

from app.errors import ApiError, ServiceUnavailable, is_transient_error, request_id
from app.extensions import db
from app.resets import service
from app.resets.models import ResetStatus

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
FINAL = frozenset({ResetStatus.COMPLETE, ResetStatus.FAILED, ResetStatus.CANCELLED})
_SLOTS_KEY = "pipeline_manager.event_stream_slots"


def wanted() -> bool:
    """Whether the request prefers an event stream to JSON (``Accept: text/event-stream``)."""
    # Pollers send no such header: spare them parsing theirs (media types ignore case).
    if "event-stream" not in request.headers.get("Accept", "").lower():
        return False
    accept = request.accept_mimetypes
    return accept.best_match(["application/json", MEDIA_TYPE]) == MEDIA_TYPE


def event_id(answer: dict[str, Any]) -> str:
    """The id of the state an answer carries: it changes exactly when an event is due."""
    return "{}.{}.{}.{}.{}".format(
        answer["status"],
        answer["phase"],
        len(answer.get("phases") or ()),
        answer["attempts"],
        answer["replayed_records"],
    )


def _event(kind: str, data: dict[str, Any], ident: str | None = None) -> str:
    lines = [f"event: {kind}"]
    if ident is not None:
        lines.append(f"id: {ident}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


class _Slots:
    """The streams one process may serve at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size) if size > 0 else None

    def take(self) -> bool:
        return self._free is not None and self._free.acquire(blocking=False)

    def give(self) -> None:
        if self._free is not None:
            self._free.release()


def _slots() -> _Slots:
    return current_app.extensions[_SLOTS_KEY]


def stream(tenant: str, pipeline_name: str, token: str | None) -> Response:
    """Answer ``reset_status`` as an event stream, or raise as the plain route would.

    The token is judged first (400, 404, 410, 503 answered as JSON, before
    any stream starts); then a slot is taken, or 503 with ``Retry-After``.
    """
    first = service.reset_status(tenant, pipeline_name, token)
    db.session.remove()  # the stream must not keep the request's connection
    slots = _slots()
    if not slots.take():
        seconds = int(current_app.config["RETRY_AFTER_SECONDS"])
        raise ServiceUnavailable(
            f"This server streams {slots.size} reset progress streams at once already; "
            "retry later, or poll reset_status",
            details={"retry_after_seconds": seconds, "max_streams": slots.size},
            headers={"Retry-After": str(seconds)},
        )
    config = current_app.config
    settings = (
        float(config["EVENT_STREAM_POLL_SECONDS"]),
        float(config["EVENT_STREAM_HEARTBEAT_SECONDS"]),
        float(config["EVENT_STREAM_MAX_SECONDS"]),
    )
    seen = request.headers.get("Last-Event-ID")
    events = _events(tenant, pipeline_name, token, first, seen, slots, *settings)
    response = Response(stream_with_context(events), mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = "no-store"
    # Proxies that buffer answers (nginx) pass this one on as it is written.
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _events(
    tenant: str,
    pipeline_name: str,
    token: str | None,
    answer: dict[str, Any],
    seen: str | None,
    slots: _Slots,
    poll: float,
    heartbeat: float,
    longest: float,
) -> Iterator[str]:
    """The stream's text, written as the reset moves; the slot is given back at its end."""
    try:
        # How long EventSource waits before it reconnects after the stream ends early.
        yield f"retry: {int(poll * 2000)}\n\n"
        began = last_write = time.monotonic()
        while True:
            ident = event_id(answer)
            if ident != seen:
                yield _event("status", answer, ident)
                seen, last_write = ident, time.monotonic()
            if answer["status"] in FINAL:
                return
            if time.monotonic() - began >= longest:
                yield ": the stream is closed after EVENT_STREAM_MAX_SECONDS; reconnect\n\n"
                return
            time.sleep(poll)
            if time.monotonic() - last_write >= heartbeat:
                yield ": keep-alive\n\n"
                last_write = time.monotonic()
            try:
                answer = service.reset_status(tenant, pipeline_name, token)
            except ApiError as exc:  # the pipeline stopped, restarted, or was deleted
                body = {"message": exc.message, "error_code": exc.error_code}
                yield _event("error", {**body, "details": exc.details})
                return
            except Exception as exc:
                db.session.rollback()
                if not is_transient_error(exc):
                    # Answered as any unexpected error is: a request id, nothing internal.
                    rid = request_id()
                    log.exception("reset progress stream failed (request id %s)", rid)
                    message = f"Internal error; quote request id {rid} when reporting it"
                    body = {"message": message, "error_code": "InternalError"}
                    yield _event("error", {**body, "details": {"request_id": rid}})
                    return
                # The database is busy: the next poll tries again.
            finally:
                db.session.remove()
    finally:
        slots.give()


def init_app(app: Flask) -> None:
    """Give the process its stream slots."""
    app.extensions[_SLOTS_KEY] = _Slots(int(app.config["EVENT_STREAMS_PER_PROCESS"]))
