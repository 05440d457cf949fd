"""``GET reset_status`` answered in WSGI, for the plain poll, without Flask's request objects.

Pollers call reset_status more than every other route together, and the
route's own work (the key, the token, one statement, the JSON) is a small
part of what a Flask request costs around it: the request context, URL
matching, eight hooks, the response object. :class:`FastStatus` sits in
front of the Flask app and answers the one request shape pollers send:

    GET /v0/pipelines/<name>/reset_status?token=<token>
    Authorization: Bearer apikey:<key>

by calling what the route calls (:func:`app.resets.service.reset_status`,
:func:`app.auth.service.principal_of_key`, the schema check, the request id,
the latency histogram, the JSON access line's context) and writing the same
answer. Everything else goes to Flask untouched: another method, path or
query (a second parameter, a percent escape), any other credential (a JWT, a
lower-case scheme), a cookie, an ``Accept`` that names an
event stream, a URL over the length bound, a host outside ``TRUSTED_HOSTS``.
So does every request whose answer is not 200: the first error (a 401, 404,
410, 503, or anything raised) hands the request to Flask, which judges it
again from the start and renders its error body.

tests/test_fast_status.py sends a matrix of requests through both paths and
checks each answer (status, headers, body) is the same; every other test of
reset_status goes through this path as clients do. ``make bench`` measures
the gain (bench/README.md, target 3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from flask import Flask
from werkzeug.exceptions import SecurityError
from werkzeug.wsgi import get_host

from app.auth.guard import required_role
from app.auth.models import Role
from app.auth.service import principal_of_key
from app.database import schema_problem
from app.errors import request_id_of
from app.logs import ACCESS_CONTEXT_KEY
from app.metrics import observe_request
from app.resets import service
from app.web import MAX_URL_BYTES

ENDPOINT = "resets.get_reset_status"
RULE = "/v0/pipelines/<pipeline_name>/reset_status"
# A pipeline's name as names are (NAME_PATTERN): ASCII, nothing to decode; any
# other segment goes to Flask, which answers it (404 for a name no pipeline has).
_PATH = re.compile(r"/v0/pipelines/([A-Za-z0-9_-]{1,100})/reset_status")
# The token alone, as issued (URL-safe base64 and dots): nothing to decode.
_QUERY = re.compile(r"token=([A-Za-z0-9_.-]+)")
# An API key, sent as the docs and the CLI send it.
_AUTHORIZATION = re.compile(r"Bearer (apikey:[A-Za-z0-9_-]{43})")

# The hooks Flask runs around the route, and what this path does for each.
_STARTS = {"_start_on_first_request"}  # run, as they are
_KNOWN_HOOKS = {
    *_STARTS,
    "_check_url_length",  # FastStatus._url_fits
    "require_schema",  # schema_problem()
    "check_request",  # the key and its role
    "_add_request_id",  # request_id_of()
    "_observe",  # observe_request()
    "_relative_redirect",  # a 200 has no Location
    "_docs_headers",  # not a docs path
    "_keep_access_context",  # ACCESS_CONTEXT_KEY
    "_remove_session",  # the app context's end removes it
}

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict, StartResponse], Iterable[bytes]]


class FastStatus:
    """WSGI middleware answering the plain reset_status poll; the rest goes to ``wsgi_app``."""

    def __init__(self, app: Flask, wsgi_app: WsgiApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.trusted_hosts = app.config.get("TRUSTED_HOSTS")
        self.keep_access_context = app.config.get("LOG_FORMAT") == "json"
        needed = required_role(ENDPOINT, "GET")
        self.allowed_roles = frozenset(role for role in Role.ALL if Role.allows(role, needed))
        # The in-process worker's start with a process's first request (app/worker.py).
        self.start_hooks = [
            hook for hook in app.before_request_funcs.get(None, ()) if hook.__name__ in _STARTS
        ]

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        """Answer a plain poll here; hand anything else, or any error, to Flask."""
        started = perf_counter()
        path = _PATH.fullmatch(environ.get("PATH_INFO", ""))
        query = _QUERY.fullmatch(environ.get("QUERY_STRING", ""))
        key = _AUTHORIZATION.fullmatch(environ.get("HTTP_AUTHORIZATION", ""))
        if (
            path is None
            or query is None
            or key is None
            or environ.get("REQUEST_METHOD") != "GET"
            or "HTTP_COOKIE" in environ
            or "event-stream" in environ.get("HTTP_ACCEPT", "").lower()
            or not self._url_fits(environ)
            or not self._host_trusted(environ)
        ):
            return self.wsgi_app(environ, start_response)
        pipeline_name = path.group(1)
        body = None
        with self.app.app_context():
            try:
                for hook in self.start_hooks:
                    hook()
                principal = principal_of_key(key.group(1))
                if (
                    principal is not None
                    and principal.role in self.allowed_roles
                    and schema_problem() is None
                ):
                    answer = service.reset_status(principal.tenant, pipeline_name, query.group(1))
                    body = self._dumps(answer)
            except Exception:
                # An error answer (401, 404, 410...) or a failure: Flask judges the
                # request again, renders the error body and logs what needs it.
                body = None
        if body is None:
            return self.wsgi_app(environ, start_response)
        rid = request_id_of(environ)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Request-Id", rid),
            ],
        )
        if self.keep_access_context:
            environ[ACCESS_CONTEXT_KEY] = (principal.tenant, pipeline_name, RULE)
        observe_request(RULE, "GET", 200, perf_counter() - started)
        return [body]

    def _dumps(self, answer: dict[str, Any]) -> bytes:
        """The answer as Flask's JSON provider writes a response (compact, a final newline)."""
        return (self.app.json.dumps(answer, separators=(",", ":")) + "\n").encode()

    @staticmethod
    def _url_fits(environ: dict) -> bool:
        """The URL length check of app/web.py, on the raw URL as sent."""
        url = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        if url is None:
            # No raw URL (a test client): the path and query, as web.py measures them then.
            url = environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", "")
        return len(url) <= MAX_URL_BYTES

    def _host_trusted(self, environ: dict) -> bool:
        """Whether Flask would accept the request's host (``TRUSTED_HOSTS``, when set)."""
        if not self.trusted_hosts:
            return True
        try:
            get_host(environ, self.trusted_hosts)
        except SecurityError:
            return False
        return True


def unknown_hooks(app: Flask) -> list[str]:
    """The request hooks on the route's way that this path neither runs nor writes the effect of."""
    found = [
        hook.__name__
        for hooks in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
        for scope in (None, "resets")
        for hook in hooks.get(scope, ())
    ]
    return sorted(set(found) - _KNOWN_HOOKS)


def install(app: Flask) -> bool:
    """Put :class:`FastStatus` in front of the app; return whether it was.

    Called last by the factory, once every hook and setting is in place. Left
    out when the app writes pretty-printed JSON (debug); when CORS origins are
    configured (flask-cors then adds its headers to every ``/v0`` answer, with
    or without an ``Origin``); and when a request hook this path does not know
    of is registered: its effect would be missing from the fast answers
    (tests/test_fast_status.py fails then).
    """
    compact = getattr(app.json, "compact", None)
    pretty = compact is False or (compact is None and app.debug)
    if pretty or app.config.get("CORS_ORIGINS") or unknown_hooks(app):
        return False
    app.wsgi_app = FastStatus(app, app.wsgi_app)  # type: ignore[method-assign]
    return True
