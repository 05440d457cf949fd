"""Sending the outbox: each due delivery POSTed, signed, to its endpoint, until acknowledged.

What a receiver gets, for every attempt of a delivery: ``POST <url>`` with
``Content-Type: application/json`` and the body::

    {"event_id": "5f0c...", "type": "reset.completed", "created_at": "2026-...+00:00",
     "tenant": "acme", "data": {...}}

and the headers ``X-Pipeline-Manager-Event`` (the type),
``X-Pipeline-Manager-Event-Id`` (the event_id), ``X-Pipeline-Manager-Timestamp``
(Unix seconds when this attempt was signed), ``X-Pipeline-Manager-Attempt``
(1, 2, ...) and ``X-Pipeline-Manager-Signature: v1=<hex>``: the HMAC-SHA256,
keyed with the endpoint's secret (its UTF-8 bytes, ``whsec_`` included), of
the timestamp, a ``.``, and the body's bytes exactly as received. A receiver:

1. computes ``hmac.new(secret.encode(), timestamp.encode() + b"." + body,
   hashlib.sha256).hexdigest()`` and compares it with the header's value after
   ``v1=`` in constant time (``hmac.compare_digest``); a mismatch is refused;
2. refuses a timestamp more than a few minutes from its own clock (5 is
   usual): a captured request replayed later no longer verifies, since its
   signature covers its timestamp;
3. deduplicates on ``event_id``: delivery is at least once, and a retry
   carries the same event_id (with a new timestamp and signature).

Any 2xx answer acknowledges the delivery. Anything else (another status, a
redirect, no answer within ``NOTIFICATION_TIMEOUT_SECONDS``, a destination
that ``HTTP_SINK_ALLOWED_NETWORKS``/``HTTP_SINK_DENIED_NETWORKS`` refuse when
connecting) is retried after ``NOTIFICATION_RETRY_BASE_SECONDS``, doubled
at each failure up to ``NOTIFICATION_RETRY_MAX_SECONDS`` (with jitter), for
``NOTIFICATION_RETRY_HOURS`` after the event; then the delivery is
``dead`` and stays listed. One attempt is one POST through the http
transport's guarded session (:mod:`app.transports.http`), cut at the
timeout whatever the receiver does (``attempt_deadline``).

Claims. A sender claims a delivery with a conditional ``UPDATE`` that only
matches it while it is pending and due, moving ``next_attempt_at`` past the
attempt (its timeout plus ``WORKER_LEASE_SECONDS``, the time the worker gives
any holder that stopped answering) and writing a claim token of its own;
only the holder of that token records the outcome. Two senders, in threads
or processes on any hosts, never send one delivery at once, while the claim
lasts. A sender that dies leaves the delivery due when its claim
runs out: it is sent again, with the same event_id (at least once).

Fairness. Each call takes the tenants with due deliveries in turn (one
each, then again; a skip scan of the tenant index finds them), each
tenant's oldest first. Once an attempt to an endpoint fails, its other
deliveries taken in the same call are not tried: they wait for the same
backoff. A dead endpoint costs one timeout per call, not one per delivery.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app.database import db_time, of_each_tenant, read_db_time, tenants_with
from app.extensions import db
from app.notifications.models import (
    DeliveryState,
    NotificationDelivery,
    NotificationEndpoint,
    NotificationEvent,
)

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"

# The tenant served last by this process: the next call starts after it.
_last_tenant: str | None = None
_turn_lock = threading.Lock()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Pipeline-Manager-Signature`` value: ``v1=`` and HMAC-SHA256 of ``timestamp.body``."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return f"{SIGNATURE_VERSION}={digest.hexdigest()}"


@dataclass(frozen=True)
class _Claimed:
    """A delivery this sender holds, with what it needs to send it."""

    id: int
    token: str
    attempts: int
    created_at: dt.datetime
    endpoint_id: int
    url: str
    secret: str
    event_id: uuid.UUID
    event_type: str
    event_created_at: dt.datetime
    tenant: str
    payload: Any


def next_due() -> dt.datetime | None:
    """When the earliest pending delivery is due (None: none is), by the database clock.

    One probe of the due index; ends the read transaction. A delivery being
    sent counts as due when its claim runs out.
    """
    due = db.session.execute(
        sa.select(sa.func.min(NotificationDelivery.next_attempt_at)).where(
            NotificationDelivery.next_attempt_at.is_not(None)
        )
    ).scalar_one_or_none()
    db.session.rollback()
    return due


def due_in() -> float | None:
    """Seconds until the earliest pending delivery is due (<= 0: now; None: none is owed).

    :func:`next_due` and the database's clock in one probe of the due index,
    for the worker's poller; ends the read transaction.
    """
    due, now = db.session.execute(
        sa.select(
            sa.select(sa.func.min(NotificationDelivery.next_attempt_at))
            .where(NotificationDelivery.next_attempt_at.is_not(None))
            .scalar_subquery(),
            db_time(),
        )
    ).one()
    db.session.rollback()
    return None if due is None else (due - now).total_seconds()


def deliver_due(limit: int = 100, budget: float | None = None) -> int:
    """Send up to ``limit`` due deliveries, tenants in turn; return how many were attempted.

    Runs in an app context and commits its own work: one short transaction
    to claim each delivery, none while it is being sent, one to record what
    came of it. No attempt starts after ``budget`` seconds (None: no bound),
    so that slow receivers hold a worker thread for a bounded time; what is
    left stays due for the next call.
    """
    config = current_app.config
    timeout = float(config["NOTIFICATION_TIMEOUT_SECONDS"])
    # A claim outlasts its attempt by a lease: the time to record the outcome.
    claim_seconds = timeout + float(config["WORKER_LEASE_SECONDS"])
    stop_at = None if budget is None else time.monotonic() + budget
    picked = _in_turn(max(1, int(limit)))
    failing: dict[int, float] = {}  # endpoint id -> the backoff of its failed attempt
    put_off: dict[int, list[int]] = {}
    attempted = 0
    for delivery_id, endpoint_id in picked:
        if stop_at is not None and time.monotonic() >= stop_at:
            break
        if endpoint_id in failing:
            put_off.setdefault(endpoint_id, []).append(delivery_id)
            continue
        claimed = _claim(delivery_id, claim_seconds)
        if claimed is None:
            continue
        attempted += 1
        error = _send(claimed, timeout)
        if error is None:
            _record_success(claimed)
        else:
            failing[endpoint_id] = _record_failure(claimed, error)
    for endpoint_id, ids in put_off.items():
        _put_off(ids, failing[endpoint_id])
    return attempted


# -- finding what is due, tenants in turn ------------------------------------------------------


def _due_tenants_query() -> sa.Select:
    """The tenants with a delivery due now: a skip scan of the (tenant, due) index.

    A recursive query steps from one tenant to the next with pending
    deliveries (one index probe each), and keeps those whose earliest is due:
    the cost grows with the tenants that have deliveries owed, never with the
    deliveries done.
    """
    due = NotificationDelivery.__table__.c.next_attempt_at
    tenants = tenants_with(due, "notification_tenants")
    earliest = of_each_tenant(due, tenants, sa.func.min, "head")
    return sa.select(tenants.c.tenant).where(tenants.c.tenant.is_not(None), earliest <= db_time())


def _in_turn(limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` due deliveries as (id, endpoint id): one per tenant, then again.

    Tenants are taken from after the one this process served last, so that
    with more tenants than ``limit`` each gets its turn over the calls. Ends
    the read transaction.
    """
    global _last_tenant
    tenants = sorted(db.session.execute(_due_tenants_query()).scalars())
    if not tenants:
        db.session.rollback()
        return []
    with _turn_lock:
        last = _last_tenant
    if last is not None:
        cut = next((i for i, name in enumerate(tenants) if name > last), 0)
        tenants = tenants[cut:] + tenants[:cut]
    tenants = tenants[:limit]
    share = math.ceil(limit / len(tenants))
    d = NotificationDelivery
    per_tenant = [
        db.session.execute(
            sa.select(d.id, d.endpoint_id)
            .where(
                d.tenant == tenant,
                d.next_attempt_at.is_not(None),
                d.next_attempt_at <= db_time(),
            )
            .order_by(d.next_attempt_at, d.id)
            .limit(share)
        ).all()
        for tenant in tenants
    ]
    db.session.rollback()
    with _turn_lock:
        _last_tenant = tenants[-1]
    picked: list[tuple[int, int]] = []
    for turn in range(share):
        for rows in per_tenant:
            if turn < len(rows) and len(picked) < limit:
                picked.append((rows[turn][0], rows[turn][1]))
    return picked


# -- one delivery --------------------------------------------------------------------------------


def _claim(delivery_id: int, seconds: float) -> _Claimed | None:
    """Claim a delivery if it is still pending and due; return it, or None (someone has it)."""
    d = NotificationDelivery
    token = uuid.uuid4().hex
    row = db.session.execute(
        sa.update(d)
        .where(
            d.id == delivery_id,
            d.state == DeliveryState.PENDING,
            d.next_attempt_at <= db_time(),
        )
        .values(
            claim=token,
            attempts=d.attempts + 1,
            next_attempt_at=db_time(seconds),
            last_attempt_at=db_time(),
        )
        .returning(d.attempts, d.created_at, d.endpoint_id, d.event_id)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        db.session.rollback()
        return None
    attempts, created_at, endpoint_id, event_id = row
    e, ev = NotificationEndpoint, NotificationEvent
    found = db.session.execute(
        sa.select(e.url, e.secret, ev.type, ev.created_at, ev.tenant, ev.payload)
        .select_from(ev)
        .outerjoin(e, e.id == endpoint_id)
        .where(ev.id == event_id)
    ).one_or_none()
    if found is None or found[0] is None:
        # Its endpoint was removed while the event was being written: nothing to send.
        db.session.execute(
            sa.delete(d).where(d.id == delivery_id).execution_options(synchronize_session=False)
        )
        db.session.commit()
        return None
    db.session.commit()
    url, secret, event_type, event_created_at, tenant, payload = found
    return _Claimed(
        delivery_id,
        token,
        attempts,
        created_at,
        endpoint_id,
        url,
        secret,
        event_id,
        event_type,
        event_created_at,
        tenant,
        payload,
    )


def body_of(claimed: _Claimed) -> bytes:
    """The JSON a delivery sends: the event, the same at every attempt."""
    message = {
        "event_id": str(claimed.event_id),
        "type": claimed.event_type,
        "created_at": claimed.event_created_at.isoformat(),
        "tenant": claimed.tenant,
        "data": claimed.payload,
    }
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _send(claimed: _Claimed, timeout: float) -> str | None:
    """POST a claimed delivery once; return None if acknowledged (2xx), else why not.

    The attempt is the http transport's own (``HttpTransport.attempt``): its
    guarded connections (the destination policy checked at every connect),
    its deadline cutting the whole attempt, its bounded read of the answer,
    and its words for each failure (refused, unreachable and silent ports
    read alike).
    """
    from app.transports import TransportError, get_transport
    from app.transports.http import AttemptFailed, HttpSettings, HttpTransport, safe_url

    driver = get_transport("http")
    assert isinstance(driver, HttpTransport)
    body = body_of(claimed)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Pipeline-Manager-Event": claimed.event_type,
        "X-Pipeline-Manager-Event-Id": str(claimed.event_id),
        "X-Pipeline-Manager-Timestamp": timestamp,
        "X-Pipeline-Manager-Attempt": str(claimed.attempts),
        "X-Pipeline-Manager-Signature": sign(claimed.secret, timestamp, body),
    }
    settings = HttpSettings(claimed.url, timeout, timeout, 0, 0.0, 0.0)
    where = safe_url(claimed.url)
    try:
        driver.attempt(settings, body, headers, timeout)
        return None
    except AttemptFailed as failure:
        if failure.cause:
            log.info("notification to %s: %s (%s)", where, failure.reason, failure.cause)
        return f"POST {where}: {failure.reason}"
    except TransportError as exc:  # the destination was refused when connecting
        return str(exc)
    except Exception as exc:  # a bug must not leave the delivery claimed until it runs out
        log.exception("notification to %s: unexpected error", where)
        return f"POST {where}: request failed ({type(exc).__name__})"


def _backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubled, capped, jittered."""
    config = current_app.config
    base = float(config["NOTIFICATION_RETRY_BASE_SECONDS"])
    cap = float(config["NOTIFICATION_RETRY_MAX_SECONDS"])
    ceiling = min(cap, base * 2 ** min(max(attempts - 1, 0), 60))
    # "Equal jitter": half fixed, half random, so failures at once do not retry in step.
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _record_success(claimed: _Claimed) -> None:
    """Mark a claimed delivery delivered (if still ours) and count it on its endpoint."""
    d, e = NotificationDelivery, NotificationEndpoint
    result = db.session.execute(
        sa.update(d)
        .where(d.id == claimed.id, d.claim == claimed.token)
        .values(
            state=DeliveryState.DELIVERED,
            delivered_at=db_time(),
            next_attempt_at=None,
            claim=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.execute(
            sa.update(e)
            .where(e.id == claimed.endpoint_id)
            .values(delivered_count=e.delivered_count + 1)
            .execution_options(synchronize_session=False)
        )
    db.session.commit()


def _record_failure(claimed: _Claimed, error: str) -> float:
    """Schedule the next attempt of a claimed delivery, or fail it past the retry window.

    The last attempt falls at the window's end at the latest. Returns the
    backoff it chose (the endpoint's other due deliveries wait as long).
    """
    d, e = NotificationDelivery, NotificationEndpoint
    hours = float(current_app.config["NOTIFICATION_RETRY_HOURS"])
    delay = _backoff(claimed.attempts)
    now = read_db_time()
    window_end = claimed.created_at + dt.timedelta(hours=hours)
    gives_up = now >= window_end
    values: dict[str, Any] = {"last_error": error, "claim": None}
    if gives_up:
        values.update(state=DeliveryState.DEAD, next_attempt_at=None)
    else:
        values["next_attempt_at"] = min(now + dt.timedelta(seconds=delay), window_end)
    result = db.session.execute(
        sa.update(d)
        .where(d.id == claimed.id, d.claim == claimed.token)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.execute(
            sa.update(e)
            .where(e.id == claimed.endpoint_id)
            .values(
                last_error=error,
                last_error_at=now,
                dead_count=e.dead_count + (1 if gives_up else 0),
            )
            .execution_options(synchronize_session=False)
        )
    db.session.commit()
    log.warning(
        "notification %s (%s) attempt %d failed%s: %s",
        claimed.event_id,
        claimed.event_type,
        claimed.attempts,
        "; given up" if gives_up else f"; retry in {delay:.1f}s",
        error,
    )
    return delay


def _put_off(delivery_ids: list[int], seconds: float) -> None:
    """Make these deliveries (of an endpoint that just failed) wait ``seconds``, if still due."""
    d = NotificationDelivery
    db.session.execute(
        sa.update(d)
        .where(
            d.id.in_(delivery_ids),
            d.state == DeliveryState.PENDING,
            d.next_attempt_at <= db_time(),
        )
        .values(next_attempt_at=db_time(seconds))
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
