"""The web side of the service: its request class, request parser, sessions and OpenAPI extension.

flask-smorest's :class:`Api` (created unbound here, bound in the factory) and
the :class:`Blueprint` every resource's routes are built from, with the
service's strict JSON parser; the request class whose body never silently
stops at ``MAX_CONTENT_LENGTH``; and the two checks before every request (the
URL's length, the schema's revision). They import :mod:`app.errors`, which
the extensions below them (:mod:`app.extensions`, :mod:`app.database`) do not.
Only :func:`app.create_app` binds these: the app a command runs in
(:func:`app.create_command_app`) serves no requests.
"""

from __future__ import annotations

from typing import IO, Any

import flask
from flask import Flask, current_app, has_request_context, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_smorest import Api as _SmorestApi
from flask_smorest import Blueprint as _SmorestBlueprint
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

from app import strict_json
from app.database import schema_problem
from app.errors import InvalidRequest, ServiceUnavailable, UnsupportedMediaType, UriTooLong
from app.schemas import ErrorSchema

# Longer URLs (path and query as sent) answer 414 UriTooLong. gunicorn refuses
# request lines over 8190 bytes itself (its ceiling, whatever limit_request_line
# says), so the service's bound sits below that, method and version included.
MAX_URL_BYTES = 8000


class _CappedStream(LimitedStream):
    """A body of unknown length (chunked) that raises 413 past ``cap`` bytes.

    Werkzeug's own stream for such a body stops reading at
    ``MAX_CONTENT_LENGTH`` without an error, so a longer body would be taken
    cut short. This one reads one byte more than the cap to tell the two apart.
    """

    def __init__(self, stream: IO[bytes], cap: int) -> None:
        super().__init__(stream, cap + 1, is_max=True)
        self.cap = cap

    def readinto(self, buffer: Any) -> int | None:
        """Read like :class:`LimitedStream`; raise 413 once more than ``cap`` bytes came."""
        size = super().readinto(buffer)
        if self.tell() > self.cap:
            raise RequestEntityTooLarge()
        return size


class Request(flask.Request):
    """Flask's request, whose body never silently stops at ``MAX_CONTENT_LENGTH``."""

    @cached_property
    def stream(self) -> IO[bytes]:
        """The body stream: a chunked body over the limit raises 413 when read."""
        limit = self.max_content_length
        if (
            self.content_length is None
            and limit is not None
            and "wsgi.input_terminated" in self.environ
        ):
            return _CappedStream(self.environ["wsgi.input"], limit)
        return get_input_stream(self.environ, max_content_length=limit)


class _Parser(FlaskParser):
    """Request parser: strict JSON (:mod:`app.strict_json`), failures answer 400, not 422."""

    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req: flask.Request, schema: Any) -> Any:
        """Refuse a body that is not JSON (webargs would read it as no body at all)."""
        if not is_json_request(req) and (req.content_length or req.mimetype):
            raise UnsupportedMediaType(
                "Send the body as JSON, with 'Content-Type: application/json'",
                details={"content_type": req.mimetype, "accepted": ["application/json"]},
            )
        return super().load_json(req, schema)

    def _raw_load_json(self, req: flask.Request) -> Any:
        """Parse the body strictly; an empty body is no body, as webargs has it."""
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        if not data.strip():
            return core.missing
        try:
            return strict_json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "not UTF-8"
        except strict_json.JsonRefused as exc:
            problem = exc.problem
        raise InvalidRequest(f"The body is not valid: {problem}", details={"json": [problem]})


class Blueprint(_SmorestBlueprint):
    """flask-smorest's Blueprint, validating with the service's parser.

    flask-smorest takes the parser from the blueprint, so every resource's
    blueprint is built from this class.
    """

    ARGUMENTS_PARSER = _Parser()


class Api(_SmorestApi):
    """flask-smorest's Api with the service's own error body.

    The error handlers live in :mod:`app.errors`; this class only documents
    their body and keeps flask-smorest from registering its own handler.
    """

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        """Leave error handling to :mod:`app.errors`."""


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with nothing built for a request without the cookie.

    API calls carry no session cookie; Flask's own interface builds its
    signing serializer on every request all the same.
    """

    def open_session(self, app: Flask, request: flask.Request) -> SecureCookieSession | None:
        """Open the request's session; an empty one, unsigned, when it sent no cookie."""
        if "HTTP_COOKIE" not in request.environ:
            return self.session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Mark the cookie Secure when configured to, and whenever the request came over TLS."""
        return super().get_cookie_secure(app) or (has_request_context() and request.is_secure)


api = Api()


def _check_url_length() -> None:
    """Answer 414 UriTooLong, with the error body, for a URL longer than any route needs."""
    environ = request.environ
    url = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path
    if len(url) > MAX_URL_BYTES:
        raise UriTooLong(
            f"The URL is longer than the {MAX_URL_BYTES} bytes accepted",
            details={"max_url_bytes": MAX_URL_BYTES, "url_bytes": len(url)},
        )


def require_schema() -> None:
    """Before a ``/v0`` request: answer 503 with the one-line fix while the schema is not there."""
    if not request.path.startswith("/v0"):
        return
    problem = schema_problem()
    if problem is not None:
        seconds = current_app.config["RETRY_AFTER_SECONDS"]
        raise ServiceUnavailable(
            problem,
            details={"reason": "schema_not_ready", "retry_after_seconds": seconds},
            headers={"Retry-After": str(seconds)},
        )


def init_app(app: Flask) -> None:
    """Install the request class and sessions, the two checks before a request, and the Api."""
    app.request_class = Request
    app.session_interface = SessionInterface()
    app.before_request(_check_url_length)
    app.before_request(require_schema)
    api.init_app(app)
