"""Idempotent retries: the ``Idempotency-Key`` header on pushes, resets and creates.

A client that lost the answer to a request sends it again with the same key.
The first request with a key claims it: a ``pending`` row is committed under a
unique ``(tenant, key)`` constraint before the work runs, so two requests with
one key never both run. The winner stores its answer (status, body and the
headers worth replaying) once its work has committed; a retry with the same
method, path and body gets that answer back, with ``Idempotent-Replayed: true``,
and stores nothing new. The same key with another request answers 422
``IdempotencyKeyReused``; a retry that arrives while the first is still
running waits a little, then answers 409 ``IdempotencyKeyInProgress``.

Answers below 500 are kept, errors included (a 404 stays a 404 for that key),
except error answers over ``IDEMPOTENCY_MAX_ERROR_BYTES``, which release the key
instead (a retry works them out again). A 5xx answer or a crash releases the
key, so that the retry runs. Keys are forgotten
``IDEMPOTENCY_RETENTION_SECONDS`` after their first use; expired rows are
deleted a few at a time by the requests that claim keys. A tenant holds at most
``IDEMPOTENCY_MAX_KEYS_PER_TENANT`` keys (409 ``QuotaExceeded`` past it).

A route whose work commits in one transaction writes the answer in that same
transaction (:func:`save_in_transaction`): a crash then cannot leave the work
stored without its key. The push of view changes does that.

When the work fails with an outcome the request cannot know (the database's
reply to a COMMIT was lost: the commit may have happened), the key's row says
which: ``done`` (its answer was committed with the work) is answered as if
nothing had failed; ``pending`` is released. Only a key still ``pending`` is
ever released, so a committed answer is never deleted. A release the database
refuses (it is down) is tried again before this process's next claim; until
then, or the pending timeout, retries answer 409 ``IdempotencyKeyInProgress``
with ``Retry-After``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from flask import Response, current_app, g, request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.exceptions import HTTPException

from app.auth.principal import current_tenant
from app.database import UTCDateTime, db_time
from app.errors import (
    ApiError,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    InvalidRequest,
    QuotaExceeded,
    handle_api_error,
    handle_http_exception,
)
from app.extensions import db

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX = 255
# Response headers that belong to the answer and are replayed with it.
KEPT_HEADERS = ("Location", "Cache-Control", "Content-Type")
# A pending key older than this is taken to be left by a crashed process: it is
# claimed afresh (the first request's late answer is then refused, see _complete).
PENDING_TIMEOUT_SECONDS = 60
# How long a retry waits for the first request with its key to finish.
WAIT_SECONDS = 2.0
WAIT_STEP_SECONDS = 0.05
# Expired rows deleted per claimed key: keeps the table bounded at little cost.
CLEANUP_BATCH = 20
# A failed request's release (or look at its key) is tried this often, so long apart.
RELEASE_TRIES = 3
RELEASE_BACKOFF_SECONDS = 0.2
# Seconds a tenant's key count is trusted before it is counted again.
COUNT_SECONDS = 5.0

PENDING = "pending"
DONE = "done"

HEADER_DOC = {
    "in": "header",
    "name": HEADER,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": KEY_MAX},
    "description": "Makes a retry safe: the same key with the same request, within "
    "`IDEMPOTENCY_RETENTION_SECONDS` (24 h), answers the first answer again "
    f"(`{REPLAYED_HEADER}: true`) and stores nothing new; with another request it "
    "answers 422 `IdempotencyKeyReused`. 1 to 255 printable ASCII characters; keys "
    "are per tenant.",
    "example": "3f0c1b8e-6a0d-4a55-9a3e-2d7c1f1e9b42",
}


class IdempotencyKey(db.Model):
    """One tenant's use of an idempotency key: the request's hash and, once known, its answer."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "key", name="uq_idempotency_keys_tenant_key"),
        sa.CheckConstraint("state IN ('pending', 'done')", name="ck_idempotency_keys_state"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(100))
    key: Mapped[str] = mapped_column(sa.String(KEY_MAX))
    # SHA-256 of the method, the path and the body bytes.
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16))
    # Who holds a pending key: only that request may store the answer.
    owner: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(timezone=True), index=True)
    response_status: Mapped[int | None] = mapped_column(sa.Integer)
    response_body: Mapped[str | None] = mapped_column(sa.Text)
    # The kept headers, as a JSON object.
    response_headers: Mapped[str | None] = mapped_column(sa.Text)


class _Claim:
    """The key this request holds, kept in ``g`` while the route runs."""

    def __init__(self, row_id: int, owner: str) -> None:
        self.row_id = row_id
        self.owner = owner
        self.saved = False


def idempotent(blp: Any, secret_fields: tuple[str, ...] = ()) -> Callable:
    """Make a route honour ``Idempotency-Key``; ``blp`` documents the header on it.

    Put it right under ``@blp.route`` (or first on a MethodView's method), so
    that it sees the finished response. ``secret_fields`` of the JSON answer
    are never stored (a new API key): a replay answers without them.
    """

    def decorator(func: Callable) -> Callable:
        func = blp.doc(parameters=[HEADER_DOC])(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = request.headers.get(HEADER)
            if key is None:
                return func(*args, **kwargs)
            return _run_once(key, func, args, kwargs, secret_fields)

        return wrapper

    return decorator


def save_in_transaction(status: int, body: dict[str, Any]) -> None:
    """Write the answer of the request's key in the current transaction, if a key was sent.

    Call it just before the commit of the route's work, so that the work and
    its answer are stored together or not at all. Raises
    :class:`IdempotencyKeyInProgress` if the key was taken over meanwhile (the
    caller's transaction must then roll back).
    """
    claim: _Claim | None = g.get("idempotency_claim")
    if claim is None:
        return
    # The bytes the route's own answer carries (jsonify's), so that a retry gets them back.
    data = current_app.json.response(body).get_data()
    _complete(claim, status, data, {"Content-Type": "application/json"})
    claim.saved = True


def _run_once(
    key: str, func: Callable, args: tuple, kwargs: dict[str, Any], secret_fields: tuple[str, ...]
) -> Any:
    """Run the route once per (tenant, key); replay its answer to retries."""
    _check_key(key)
    request_hash = _hash_request()
    tenant = current_tenant()
    found = _claim_or_find(tenant, key, request_hash)
    if isinstance(found, IdempotencyKey):
        return _replay(found)
    claim = found
    g.idempotency_claim = claim
    try:
        response = _as_response(func(*args, **kwargs))
    except (ApiError, HTTPException) as exc:
        status = exc.status_code if isinstance(exc, ApiError) else (exc.code or 500)
        if status >= 500 or isinstance(exc, IdempotencyKeyInProgress):
            committed = _settle_failed(claim)
            if committed is not None:
                return committed
            raise
        if isinstance(exc, ApiError):
            response = handle_api_error(exc)
        else:
            response = handle_http_exception(exc)
    except BaseException:
        committed = _settle_failed(claim)
        if committed is not None:
            return committed
        raise
    finally:
        g.pop("idempotency_claim", None)
    if response.status_code >= 500:
        committed = _settle_failed(claim)
        return response if committed is None else committed
    if not claim.saved:
        body = _stored_body(response, secret_fields)
        if response.status_code >= 400 and len(body) > _max_error_bytes():
            # Too big to keep for a day: a retry works the error out again.
            _settle_failed(claim)
            return response
        kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
        _complete(claim, response.status_code, body, kept)
        db.session.commit()
    return response


def _max_error_bytes() -> int:
    return int(current_app.config["IDEMPOTENCY_MAX_ERROR_BYTES"])


def _stored_body(response: Response, secret_fields: tuple[str, ...]) -> bytes:
    """The answer's body as kept: without its secret fields."""
    data = response.get_data()
    body = response.get_json(silent=True) if secret_fields else None
    if not isinstance(body, dict) or not set(secret_fields) & body.keys():
        return data
    kept = {name: value for name, value in body.items() if name not in secret_fields}
    return current_app.json.response(kept).get_data()


def _check_key(key: str) -> None:
    """Raise 400 unless the key is 1 to 255 printable ASCII characters."""
    if not (0 < len(key) <= KEY_MAX and all(" " <= ch <= "~" for ch in key)):
        raise InvalidRequest(
            f"The {HEADER} header must be 1 to {KEY_MAX} printable ASCII characters",
            details={HEADER: [f"1 to {KEY_MAX} printable ASCII characters (a UUID will do)."]},
        )


def _hash_request() -> str:
    """Return the SHA-256 of the request's method, path and body bytes."""
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.path}\n".encode())
    # Cached: the route reads the same bytes afterwards.
    digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def _retention() -> float:
    return float(current_app.config["IDEMPOTENCY_RETENTION_SECONDS"])


def _find(tenant: str, key: str) -> IdempotencyKey | None:
    return db.session.execute(
        sa.select(IdempotencyKey).where(IdempotencyKey.tenant == tenant, IdempotencyKey.key == key)
    ).scalar_one_or_none()


def _is_stale(row_id: int) -> bool:
    """Tell whether a key has expired, or is pending past the timeout (by the db's clock)."""
    stale = sa.or_(
        IdempotencyKey.created_at < db_time(-_retention()),
        sa.and_(
            IdempotencyKey.state == PENDING,
            IdempotencyKey.created_at < db_time(-PENDING_TIMEOUT_SECONDS),
        ),
    )
    found = db.session.execute(
        sa.select(IdempotencyKey.id).where(IdempotencyKey.id == row_id, stale)
    ).scalar_one_or_none()
    return found is not None


def _claim_or_find(tenant: str, key: str, request_hash: str) -> _Claim | IdempotencyKey:
    """Claim the key (a committed pending row), or return its finished row to replay.

    Raises 422 for a key used with another request, 409 if its first request
    is still running after a short wait.
    """
    if _unreleased:
        _retry_releases()
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        row = _find(tenant, key)
        if row is not None and _is_stale(row.id):
            db.session.execute(sa.delete(IdempotencyKey).where(IdempotencyKey.id == row.id))
            db.session.commit()
            row = None
        if row is None:
            owner = uuid.uuid4().hex
            _delete_expired()
            _check_quota(tenant)
            claimed = IdempotencyKey(
                tenant=tenant,
                key=key,
                request_hash=request_hash,
                state=PENDING,
                owner=owner,
                created_at=db_time(),
            )
            db.session.add(claimed)
            try:
                db.session.flush()
                row_id = claimed.id
                db.session.commit()
                return _Claim(row_id, owner)
            except IntegrityError:
                # Another request claimed it first: look again.
                db.session.rollback()
                continue
        if row.request_hash != request_hash:
            db.session.rollback()
            raise IdempotencyKeyReused(
                f"The {HEADER} '{key}' was already used for a different request; "
                "use a new key for a new request",
                details={"idempotency_key": key},
            )
        if row.state == DONE:
            return row
        db.session.rollback()
        if time.monotonic() >= deadline:
            raise IdempotencyKeyInProgress(
                f"A request with the {HEADER} '{key}' is still running; retry shortly",
                details={"idempotency_key": key},
                headers=_retry_after(),
            )
        time.sleep(WAIT_STEP_SECONDS)


# Where each app keeps, per tenant, (keys counted, when): a claim counts every few seconds.
_COUNTS = "pipeline_manager.idempotency_counts"


def _check_quota(tenant: str) -> None:
    """Raise ``QuotaExceeded`` when the tenant holds ``IDEMPOTENCY_MAX_KEYS_PER_TENANT`` keys.

    Counted again every ``COUNT_SECONDS`` per process and added to in between,
    so the quota holds to within what a few seconds of claims add.
    """
    limit = int(current_app.config["IDEMPOTENCY_MAX_KEYS_PER_TENANT"] or 0)
    if not limit:
        return
    _counts: dict[str, tuple[int, float]] = current_app.extensions.setdefault(_COUNTS, {})
    count, when = _counts.get(tenant, (0, 0.0))
    if time.monotonic() - when > COUNT_SECONDS:
        count = db.session.execute(
            sa.select(sa.func.count()).where(IdempotencyKey.tenant == tenant)
        ).scalar_one()
        when = time.monotonic()
    if count >= limit:
        _counts[tenant] = (count, when)
        raise QuotaExceeded(
            f"The tenant holds {count} idempotency keys, its quota "
            "(IDEMPOTENCY_MAX_KEYS_PER_TENANT); keys are forgotten "
            "IDEMPOTENCY_RETENTION_SECONDS after their first use",
            details={"quota": "idempotency_keys", "limit": limit, "current": count},
            headers=_retry_after(),
        )
    _counts[tenant] = (count + 1, when)


def _delete_expired() -> None:
    """Delete a few keys past retention (in the caller's transaction)."""
    expired = (
        sa.select(IdempotencyKey.id)
        .where(IdempotencyKey.created_at < db_time(-_retention()))
        .order_by(IdempotencyKey.id)
        .limit(CLEANUP_BATCH)
    )
    db.session.execute(sa.delete(IdempotencyKey).where(IdempotencyKey.id.in_(expired)))


def _complete(claim: _Claim, status: int, body: bytes, headers: dict[str, str]) -> None:
    """Store the answer on the claimed row (in the caller's transaction)."""
    result = db.session.execute(
        sa.update(IdempotencyKey)
        .where(IdempotencyKey.id == claim.row_id, IdempotencyKey.owner == claim.owner)
        .values(
            state=DONE,
            response_status=status,
            response_body=body.decode("utf-8"),
            response_headers=json.dumps(headers),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        # Taken over after the pending timeout: the other request owns the answer.
        raise IdempotencyKeyInProgress(
            f"Another request took over this {HEADER}; retry to get its answer",
            details={},
            headers=_retry_after(),
        )


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])}


# Releases the database refused, (row id, owner): tried again before the next claim.
_unreleased: set[tuple[int, str]] = set()
_unreleased_lock = threading.Lock()


def _release_statement(row_id: int, owner: str) -> sa.Delete:
    """Delete a claimed key only while it is pending: an answer committed with its work stays."""
    return (
        sa.delete(IdempotencyKey)
        .where(
            IdempotencyKey.id == row_id,
            IdempotencyKey.owner == owner,
            IdempotencyKey.state == PENDING,
        )
        .execution_options(synchronize_session=False)
    )


def _settle_failed(claim: _Claim) -> Response | None:
    """After the route failed: its committed answer if the work committed after all, else release.

    The failure may hide a commit that happened (a COMMIT whose reply was
    lost): the key's row, committed with the work, says so. Returns that
    answer, or None once the pending key is released (or, the database
    refusing, noted for :func:`_retry_releases`).
    """
    for attempt in range(RELEASE_TRIES):
        try:
            db.session.rollback()
            row = db.session.execute(
                sa.select(IdempotencyKey).where(
                    IdempotencyKey.id == claim.row_id, IdempotencyKey.owner == claim.owner
                )
            ).scalar_one_or_none()
            if row is not None and row.state == DONE:
                return _answer(row)
            db.session.execute(_release_statement(claim.row_id, claim.owner))
            db.session.commit()
            return None
        except Exception:
            db.session.rollback()
            if attempt + 1 < RELEASE_TRIES:
                time.sleep(RELEASE_BACKOFF_SECONDS * (attempt + 1))
    with _unreleased_lock:
        _unreleased.add((claim.row_id, claim.owner))
    return None


def _retry_releases() -> None:
    """Release the keys whose release the database refused earlier (now that it answers)."""
    with _unreleased_lock:
        pending = list(_unreleased)
    for row_id, owner in pending:
        db.session.execute(_release_statement(row_id, owner))
        db.session.commit()
        with _unreleased_lock:
            _unreleased.discard((row_id, owner))


def _answer(row: IdempotencyKey) -> Response:
    """A stored answer as a response (ends the read transaction)."""
    headers = json.loads(row.response_headers or "{}")
    body = (row.response_body or "").encode("utf-8")
    db.session.rollback()
    return Response(body, status=row.response_status, headers=headers)


def _replay(row: IdempotencyKey) -> Response:
    """Answer a retry with a stored answer."""
    response = _answer(row)
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _as_response(result: Any) -> Response:
    """Turn what a view returned into a response (flask-smorest's views already do)."""
    if isinstance(result, Response):
        return result
    return current_app.make_response(result)
