"""The error layer: one exception class per error case, one renderer for all.

Every error of every route, whether raised by the service, by Flask/Werkzeug,
by request validation or by a bug, leaves as the same JSON body::

    {"message": "...", "error_code": "CamelCase", "details": {...}}
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from app.database import is_transient_error, note_storage_full, storage_full
from app.extensions import db

log = logging.getLogger(__name__)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_REQUEST_ID_KEY = "pipeline_manager.request_id"


class ApiError(Exception):
    """Base class of every error the service answers with on purpose."""

    status_code = 500
    error_code = "InternalError"
    message = "Internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details or {}
        self.headers = headers or {}


class InvalidRequest(ApiError):
    """The request's parameters or body are not valid."""

    status_code = 400
    error_code = "InvalidRequest"
    message = "The request is not valid"


class InvalidResetToken(ApiError):
    """The reset token cannot be accepted; ``details.reason`` tells why."""

    status_code = 400
    error_code = "InvalidResetToken"


class AuthenticationFailed(ApiError):
    """No valid credentials came with the request."""

    status_code = 401
    error_code = "AuthenticationFailed"


class InsufficientPermissions(ApiError):
    """The credentials are valid but lack the needed role."""

    status_code = 403
    error_code = "InsufficientPermissions"


class NotFoundError(ApiError):
    """Base class of the "no such thing" errors."""

    status_code = 404
    error_code = "NotFound"


class UnknownPipelineName(NotFoundError):
    """No pipeline of that name is visible to the caller."""

    error_code = "UnknownPipelineName"

    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown pipeline name '{name}'", details={"pipeline_name": name})


class UnknownView(NotFoundError):
    """The pipeline declares no view of that name."""

    error_code = "UnknownView"

    def __init__(self, pipeline_name: str, view_name: str) -> None:
        super().__init__(
            f"Pipeline '{pipeline_name}' has no view '{view_name}'",
            details={"pipeline_name": pipeline_name, "view_name": view_name},
        )


class UnknownConnector(NotFoundError):
    """The view has no output connector of that name."""

    error_code = "UnknownConnector"

    def __init__(self, pipeline_name: str, view_name: str, connector_name: str) -> None:
        super().__init__(
            f"View '{view_name}' of pipeline '{pipeline_name}' has no connector '{connector_name}'",
            details={
                "pipeline_name": pipeline_name,
                "view_name": view_name,
                "connector_name": connector_name,
            },
        )


class ConflictError(ApiError):
    """Base class of the "state does not allow it" errors."""

    status_code = 409
    error_code = "Conflict"


class DuplicateName(ConflictError):
    """A resource of that name already exists where names must be unique."""

    error_code = "DuplicateName"


class IdempotencyKeyInProgress(ConflictError):
    """The first request with this Idempotency-Key is still running (:mod:`app.idempotency`)."""

    error_code = "IdempotencyKeyInProgress"


class ResetNotCancellable(ConflictError):
    """The reset cannot be cancelled: it ended, or its sink was already told to reset."""

    error_code = "ResetNotCancellable"


class QuotaExceeded(ConflictError):
    """The tenant is at one of its quotas: pipelines, connectors or queued resets."""

    error_code = "QuotaExceeded"


class SinkInUse(ConflictError):
    """Another connector already writes to that sink (one file, one connector)."""

    error_code = "SinkInUse"


class PipelineNotStopped(ConflictError):
    """The change needs a stopped pipeline."""

    error_code = "PipelineNotStopped"


class IllegalPipelineAction(ConflictError):
    """The action cannot be taken from the pipeline's current status."""

    error_code = "IllegalPipelineAction"


class IllegalConnectorAction(ConflictError):
    """The connector cannot do that now (``details.reason`` says why)."""

    error_code = "IllegalConnectorAction"


class IdempotencyKeyReused(ApiError):
    """The Idempotency-Key was already used for a different request (:mod:`app.idempotency`)."""

    status_code = 422
    error_code = "IdempotencyKeyReused"


class PipelineRestarted(ApiError):
    """The token belongs to an incarnation that has ended."""

    status_code = 410
    error_code = "PipelineRestarted"


class PayloadTooLarge(ApiError):
    """The request body is larger than the service accepts."""

    status_code = 413
    error_code = "PayloadTooLarge"


class UriTooLong(ApiError):
    """The request's URL is longer than the service reads."""

    status_code = 414
    error_code = "UriTooLong"


class UnsupportedMediaType(ApiError):
    """The body is not in a format the route takes (``details.accepted`` lists them)."""

    status_code = 415
    error_code = "UnsupportedMediaType"


class PipelineNotRunning(ApiError):
    """The pipeline is stopped: no live incarnation can serve the request."""

    status_code = 503
    error_code = "PipelineNotRunning"

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(
            message or f"Pipeline '{name}' is not running",
            details={"pipeline_name": name, "status": "stopped"},
        )


class ServiceUnavailable(ApiError):
    """The database is busy or unreachable; the client retries later."""

    status_code = 503
    error_code = "ServiceUnavailable"
    message = "The service is busy; retry later"


class UnknownApiKey(NotFoundError):
    """The tenant has no API key of that name."""

    error_code = "UnknownApiKey"

    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown API key name '{name}'", details={"api_key_name": name})


class UnknownNotificationEndpoint(NotFoundError):
    """The tenant has no notification endpoint of that id."""

    error_code = "UnknownNotificationEndpoint"

    def __init__(self, notification_id: str) -> None:
        super().__init__(
            f"Unknown notification endpoint '{notification_id}'",
            details={"notification_id": notification_id},
        )


# The code of an HTTP error of a status not listed below.
HTTP_ERROR_FALLBACK = "HttpError"
# Werkzeug's HTTP errors, by status code, under stable names.
_HTTP_ERROR_CODES = {
    400: "InvalidRequest",
    401: "AuthenticationFailed",
    403: "InsufficientPermissions",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    411: "LengthRequired",
    413: "PayloadTooLarge",
    414: "UriTooLong",
    415: "UnsupportedMediaType",
    422: "InvalidRequest",
    429: "TooManyRequests",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalError",
    501: "NotImplemented",
    503: "ServiceUnavailable",
}


def error_codes() -> list[str]:
    """Every ``error_code`` the service answers with, from the error classes themselves.

    The classes' codes (:class:`ApiError` and its subclasses, wherever they
    are defined) and those of the HTTP errors answered outside them. The
    OpenAPI document lists exactly these as the ``error_code`` enum.
    """
    codes = {*_HTTP_ERROR_CODES.values(), HTTP_ERROR_FALLBACK}
    pending: list[type[ApiError]] = [ApiError]
    while pending:
        cls = pending.pop()
        codes.add(cls.error_code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


def request_id() -> str:
    """Return this request's id: the caller's ``X-Request-Id`` if sane, else a new one."""
    return request_id_of(request.environ)


def request_id_of(environ: dict[str, Any]) -> str:
    """The id of the request ``environ`` describes (:func:`request_id`, in WSGI terms)."""
    # Kept in the request's environ, not in ``g``: an app context (and its
    # ``g``) can outlive one request, e.g. around a test client's requests.
    rid = environ.get(_REQUEST_ID_KEY)
    if rid is None:
        given = environ.get("HTTP_X_REQUEST_ID", "")
        rid = given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex
        environ[_REQUEST_ID_KEY] = rid
    return rid


def error_response(
    status: int,
    error_code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build the JSON response of an error."""
    response = jsonify({"message": message, "error_code": error_code, "details": details or {}})
    response.status_code = status
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response


def _validation_details(data: dict[str, Any] | None) -> dict[str, Any]:
    """Flatten webargs' ``{location: {field: [messages]}}`` into ``{field: [messages]}``."""
    messages = (data or {}).get("messages") or {}
    details: dict[str, Any] = {}
    for location, fields in messages.items():
        if isinstance(fields, dict):
            for field, errors in fields.items():
                key = "body" if field == "_schema" else field
                details[key] = errors
        else:
            details[location] = fields
    return details


def handle_api_error(error: ApiError) -> Response:
    """Render an :class:`ApiError`, dropping whatever the request left unsaved."""
    db.session.rollback()
    return error_response(
        error.status_code, error.error_code, error.message, error.details, error.headers
    )


def handle_http_exception(error: HTTPException) -> Response:
    """Render Werkzeug's errors, request validation included, in the service's body."""
    status = error.code or 500
    if status >= 500:
        return handle_unexpected(error)
    error_code = _HTTP_ERROR_CODES.get(status, HTTP_ERROR_FALLBACK)
    headers: dict[str, str] = {}
    details: dict[str, Any] = {}
    message = error.description or error.name
    data = getattr(error, "data", None)
    if data and "messages" in data:
        # webargs' validation failure.
        details = _validation_details(data)
        message = "The request is not valid: " + ", ".join(sorted(details)) if details else message
        error_code = "InvalidRequest"
        # flask-smorest's blueprints abort with 422 whatever parser the Api names.
        status = InvalidRequest.status_code
    elif status == 405:
        allowed = sorted(getattr(error, "valid_methods", None) or [])
        headers["Allow"] = ", ".join(allowed)
        details = {"method": request.method, "allowed_methods": allowed}
        message = f"Method {request.method} is not allowed here"
    elif status == 404:
        details = {"path": request.path}
        message = f"No such route: {request.path}"
    elif status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        details = {"max_content_length": limit}
        message = f"The request body is larger than the {limit} bytes accepted"
    return error_response(status, error_code, message, details, headers)


def handle_unexpected(error: BaseException) -> Response:
    """Answer 500 (or 503 for a busy database) without telling anything internal."""
    try:
        db.session.rollback()
    except Exception:  # the connection died with the error: the pool replaces it
        log.debug("rollback after an error failed", exc_info=True)
    original = getattr(error, "original_exception", None) or error
    if is_transient_error(original):
        if storage_full(original):
            note_storage_full()
        log.warning("database busy or unreachable: %s", type(original).__name__)
        seconds = current_app.config["RETRY_AFTER_SECONDS"]
        return error_response(
            503,
            ServiceUnavailable.error_code,
            ServiceUnavailable.message,
            {"retry_after_seconds": seconds},
            {"Retry-After": str(seconds)},
        )
    rid = request_id()
    log.error("unexpected error (request id %s)", rid, exc_info=original)
    return error_response(
        500,
        "InternalError",
        f"Internal error; quote request id {rid} when reporting it",
        {"request_id": rid},
    )


def _add_request_id(response: Response) -> Response:
    """Echo the request id so callers can quote it."""
    response.headers["X-Request-Id"] = request_id()
    return response


def init_app(app: Flask) -> None:
    """Register the handlers that render every error."""
    app.register_error_handler(ApiError, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
    app.after_request(_add_request_id)
