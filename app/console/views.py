"""The console's pages, fragments and buttons.

Pages render whole. A pipeline's page lists its connectors a page at a time
(``CONSOLE_PAGE_SIZE``, by view then connector name; see
:mod:`app.console.panels`), and polls them with one request for the page,
not one per connector: the answer holds the page's panels (stats, the latest
reset's progress, its history), swapped in by id (htmx ``hx-swap-oob``), and
the poller itself, whose interval follows the page: every second while a
reset on it runs, every few seconds otherwise. A running reset's bar follows
the reset's event stream (:mod:`app.resets.events`, served here under the
console's session) while the browser holds it open; ``static/console.js``
then polls at the idle pace, and at the page's pace again when the stream
fails (503 beyond ``EVENT_STREAMS_PER_PROCESS``). Buttons are plain forms
(each with its CSRF token) that answer with a redirect back to the page they
were on, so they work without JavaScript too; htmx boosts them into in-page
requests.

Every error is a page or, after a button, a flash message on the page it
came back to: never the API's JSON nor a traceback. Another tenant's pipeline
answers exactly like one that does not exist (404).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException, NotFound

from app.auth import current_tenant
from app.auth.models import Role
from app.connectors import service as connectors_service
from app.connectors.models import Connector
from app.console import access, panels
from app.console.panels import Cursor
from app.database import is_transient_error, utcnow
from app.errors import ApiError, NotFoundError, ResetNotCancellable, request_id
from app.extensions import db
from app.headers import SECURITY_HEADERS
from app.pipelines import service as pipelines_service
from app.pipelines.models import Pipeline, PipelineStatus, is_valid_name
from app.resets import events as reset_events
from app.resets import service as resets_service
from app.resets.models import Reset

log = logging.getLogger(__name__)

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
)

# Seconds between polls of a pipeline page: while a reset on it runs, and otherwise.
POLL_RESET_SECONDS = 1
POLL_IDLE_SECONDS = 5
# Which lifecycle buttons a pipeline shows in each status (all five exist as routes).
LIFECYCLE = {
    PipelineStatus.STOPPED: ("start",),
    PipelineStatus.RUNNING: ("pause", "stop", "restart"),
    PipelineStatus.PAUSED: ("resume", "stop", "restart"),
}
# Asked before the button's request is sent (htmx's hx-confirm).
CONFIRM = {
    "stop": "Stop pipeline '{name}'? Its incarnation ends; running resets are abandoned.",
    "restart": "Restart pipeline '{name}'? A new incarnation starts; running resets are "
    "abandoned and their tokens answer 410.",
}
_DONE = {
    "start": "started",
    "stop": "stopped",
    "pause": "paused",
    "resume": "resumed",
    "restart": "restarted",
}
# Every console answer: only this origin's scripts, styles and forms; never in a frame.


# -- who is asking ----------------------------------------------------------------------------


def _is_fragment_request() -> bool:
    """An htmx request for part of a page (a poll), not a boosted page load."""
    return request.headers.get("HX-Request") == "true" and "HX-Boosted" not in request.headers


def _to_sign_in() -> Response:
    """Send the browser to the sign-in page (htmx: the whole page, not the polled part)."""
    target = url_for(".sign_in")
    if request.method == "GET" and request.path != url_for(".index"):
        target = url_for(".sign_in", next=request.full_path.rstrip("?"))
    if request.headers.get("HX-Request") == "true":
        response = current_app.response_class(status=401)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, 303)


def _arrived_from_another_site() -> bool:
    """A page load that another site led to: the browser kept the strict cookies home."""
    return (
        request.method == "GET"
        and request.headers.get("Sec-Fetch-Site") == "cross-site"
        and "HX-Request" not in request.headers
        and "HTTP_COOKIE" not in request.environ
    )


@bp.before_request
def _check_operator() -> Any:
    """Let public routes through; otherwise require a live session, its CSRF token and role.

    A page load led here by another site (a link in a chat) comes without the
    strict session cookie; it is loaded again from here, which sends it.
    """
    g.pop("principal", None)  # not one an enclosing app context (a test) left behind
    if _arrived_from_another_site() and request.endpoint != "console.static":
        return render_template("console/hop.html", url=request.full_path.rstrip("?"))
    needed = access.required_role(request.endpoint, request.method)
    unsafe = request.method not in access.SAFE_METHODS
    if needed == access.PUBLIC:
        if unsafe and request.endpoint == "console.sign_in":
            access.check_sign_in_csrf()
        elif unsafe:
            access.check_csrf()
        return None
    principal = access.operator()
    if principal is None:
        if access.signed_in():
            access.forget()
            flash(
                "Your session has ended (the key was revoked or expired, or it was open too "
                "long). Sign in again.",
                "error",
            )
        return _to_sign_in()
    g.principal = principal
    if unsafe:
        access.check_csrf()
    if not Role.allows(principal.role, needed):
        raise access.refuse_role(needed, principal)
    return None


@bp.after_request
def _secure(response: Response) -> Response:
    """Add the security headers; keep pages (private, with CSRF tokens) out of caches."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


def _number(value: int | float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def _when(value: dt.datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.context_processor
def _template_helpers() -> dict[str, Any]:
    return {
        "csrf_field": access.CSRF_FIELD,
        "csrf_token": access.csrf_token,
        "may": access.may,
        "operator": g.get("principal"),
        "key_name": access.key_name,
        "number": _number,
        "when": _when,
        "history_size": panels.HISTORY_SIZE,
    }


# -- errors -----------------------------------------------------------------------------------

_TITLES = {
    400: "That did not work",
    401: "Sign-in needed",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible right now",
    410: "Gone",
    413: "Too large",
    503: "Busy",
}


def _error_page(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error as a page (or, for a poll, as a small notice in place of the panel)."""
    template = "console/_error.html" if _is_fragment_request() else "console/error.html"
    title = _TITLES.get(status, "Something went wrong")
    response = current_app.make_response(
        (render_template(template, status=status, title=title, message=message), status)
    )
    response.headers.update(headers or {})
    return response


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    db.session.rollback()
    return _error_page(error.status_code, error.message, error.headers)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    db.session.rollback()
    return _error_page(error.code or 500, error.description or error.name)


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    db.session.rollback()
    original = getattr(error, "original_exception", None) or error
    if is_transient_error(original):
        seconds = current_app.config["RETRY_AFTER_SECONDS"]
        log.warning("database busy or unreachable: %s", type(original).__name__)
        return _error_page(
            503,
            "The database is busy. Try again in a moment.",
            {"Retry-After": str(seconds)},
        )
    rid = request_id()
    log.error("unexpected error in the console (request id %s)", rid, exc_info=original)
    return _error_page(
        500, f"Something went wrong on our side. Quote request id {rid} when reporting it."
    )


# -- sign-in ----------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str:
    """Where to go after sign-in: a console path given, else the pipeline list."""
    home = url_for(".index")
    if not value or "\\" in value or any(ord(c) < 32 for c in value):
        return home
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith(home):
        return home
    return value


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """Sign in with an API key (checked once; the session keeps only its handle)."""
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET" and access.signed_in() and access.operator() is not None:
        return redirect(next_url, 303)
    try:
        if request.method == "GET":
            return _sign_in_page(next_url)
        principal = access.sign_in(request.form.get("api_key", ""))
    except access.SignInFailed as exc:
        return _sign_in_page(next_url, str(exc), 401)
    name, role, tenant = access.key_name(principal), principal.role, principal.tenant
    flash(f"Signed in with the key '{name}' ({role}, tenant {tenant}).", "info")
    response = redirect(next_url, 303)
    response.delete_cookie(
        access.SIGN_IN_COOKIE,
        path=url_for(".sign_in"),
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


def _sign_in_page(next_url: str, error: str | None = None, status: int = 200) -> Response:
    """The sign-in form, with its CSRF token (and the cookie the token is checked against)."""
    token, cookie = access.sign_in_token()
    page = render_template(
        "console/sign_in.html", next_url=next_url, error=error, sign_in_token=token
    )
    response = current_app.make_response((page, status))
    if cookie is not None:
        response.set_cookie(
            access.SIGN_IN_COOKIE,
            cookie,
            max_age=current_app.permanent_session_lifetime,
            path=url_for(".sign_in"),
            secure=request.is_secure,
            httponly=True,
            samesite="Strict",
        )
    return response


@bp.route("/sign-out", methods=["POST"])
def sign_out() -> Any:
    """End the session."""
    access.sign_out()
    flash("Signed out.", "info")
    return redirect(url_for(".sign_in"), 303)


# -- pages ------------------------------------------------------------------------------------


def _page_size() -> int:
    """Pipelines per page of the list, and connectors per page of a pipeline."""
    return max(1, int(current_app.config["CONSOLE_PAGE_SIZE"]))


@bp.route("/")
def index() -> Any:
    """The caller's pipelines: status, incarnation, views and their connectors."""
    after = request.args.get("after") or None
    if after is not None and not is_valid_name(after):
        after = None
    size = _page_size()
    found = pipelines_service.list_pipelines(current_tenant(), size + 1, after)
    page = found[:size]
    summaries = panels.view_summaries([view for p in page for view in p.views])
    rows = [
        {"pipeline": p, "views": [(view, summaries[view.id]) for view in p.views]} for p in page
    ]
    next_after = page[-1].name if len(found) > size else None
    return render_template("console/index.html", rows=rows, next_after=next_after, after=after)


def _load_pipeline(pipeline_name: str) -> Pipeline:
    """The caller's pipeline of that name (another tenant's answers 404, as an unknown one)."""
    return pipelines_service.get_pipeline(current_tenant(), pipeline_name)


def _cursor_arg(cursor: Cursor | None) -> str | None:
    """A cursor as a URL's ``after`` (None: the first page, no argument)."""
    return None if cursor is None else str(cursor)


def _connector_page(found: Pipeline) -> tuple[Cursor | None, list[Connector], Cursor | None]:
    """The page asked for: its cursor, its connectors, and the next page's cursor (or None)."""
    after = Cursor.parse(request.args.get("after"))
    size = _page_size()
    connectors = panels.connectors_after(found, after, size + 1)
    shown = connectors[:size]
    last = shown[-1] if shown else None
    following = Cursor(last.view.name, last.name) if last and len(connectors) > size else None
    return after, shown, following


def _poller(found: Pipeline, after: Cursor | None, shown: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's one poller: what it asks for, and how often."""
    return {
        "url": url_for(".pipeline_panels", pipeline_name=found.name, after=_cursor_arg(after)),
        "seconds": POLL_RESET_SECONDS if panels.is_running(shown) else POLL_IDLE_SECONDS,
        # The pace console.js keeps while event streams carry the running resets.
        "idle": POLL_IDLE_SECONDS,
        "at": utcnow(),
    }


def _pager(
    found: Pipeline,
    after: Cursor | None,
    connectors: list[Connector],
    following: Cursor | None,
    total: int,
) -> dict[str, Any]:
    """Where the page stands among the pipeline's connectors, and the links to its neighbours.

    Counts are ``COUNT`` in SQL; the previous page's cursor is found by walking
    back at most one page (see :mod:`app.console.panels`).
    """
    size = _page_size()
    before = panels.count_through(found, after) if after is not None else 0
    previous = None
    if connectors and after is not None:
        first = Cursor(connectors[0].view.name, connectors[0].name)
        previous = {"after": _cursor_arg(panels.cursor_before(found, first, size))}
    return {
        "after": _cursor_arg(after),
        "first": before + 1,
        "last": before + len(connectors),
        "total": total,
        "number": -(-before // size) + 1,
        "pages": max(1, -(-total // size)),
        "previous": previous,
        "next": _cursor_arg(following),
    }


@bp.route("/pipelines/<pipeline_name>")
def pipeline(pipeline_name: str) -> Any:
    """A pipeline: its lifecycle buttons, its views, and one page of its connectors."""
    found = _load_pipeline(pipeline_name)
    after, connectors, following = _connector_page(found)
    shown = panels.load_panels(found, connectors)
    views = panels.view_counts(found)
    total = sum(count for _, count in views)
    return render_template(
        "console/pipeline.html",
        pipeline=found,
        views=views,
        sections=panels.by_view(shown),
        poll=_poller(found, after, shown),
        pager=_pager(found, after, connectors, following, total),
        actions=LIFECYCLE.get(found.status, ()),
        confirm={k: v.format(name=found.name) for k, v in CONFIRM.items()},
    )


@bp.route("/pipelines/<pipeline_name>/panels")
def pipeline_panels(pipeline_name: str) -> Any:
    """The panels of one page of a pipeline's connectors, for htmx to poll (one request a page)."""
    found = _load_pipeline(pipeline_name)
    after, connectors, _ = _connector_page(found)
    shown = panels.load_panels(found, connectors)
    return render_template(
        "console/_poll.html",
        pipeline=found,
        panels=shown,
        poll=_poller(found, after, shown),
        after=_cursor_arg(after),
    )


_CONNECTOR = "/pipelines/<pipeline_name>/views/<view_name>/connectors/<connector_name>"


# -- buttons ----------------------------------------------------------------------------------


def _act(found: Pipeline, act: Callable[[], str], anchor: str = "") -> Response:
    """Run a button's action on the caller's pipeline; flash how it went; back to its page.

    Back to the page of connectors the button was on (the form's ``after``).
    An unknown pipeline, view or connector answers the 404 page; any other
    refusal of the service (a conflict, a stopped pipeline) is flashed on the page.
    """
    try:
        message = act()
    except NotFoundError:
        raise
    except ApiError as exc:
        db.session.rollback()
        flash(exc.message, "error")
    else:
        flash(message, "success")
    after = Cursor.parse(request.form.get("after"))
    page = url_for(".pipeline", pipeline_name=found.name, after=_cursor_arg(after))
    return redirect(page + anchor, 303)


@bp.route("/pipelines/<pipeline_name>/<any(start, stop, pause, resume, restart):action>",
          methods=["POST"])  # fmt: skip
def pipeline_action(pipeline_name: str, action: str) -> Response:
    """Start, stop, pause, resume or restart a pipeline."""

    found = _load_pipeline(pipeline_name)

    def act() -> str:
        done = getattr(pipelines_service, action)(found)
        return (
            f"Pipeline '{done.name}' {_DONE[action]}: it is {done.status}, "
            f"incarnation {done.incarnation}."
        )

    return _act(found, act)


def _anchor(connector: Connector) -> str:
    """Where a connector's card is on its page."""
    return f"#connector-{connector.id}"


@bp.route(f"{_CONNECTOR}/<any(pause, start):action>", methods=["POST"])
def connector_action(pipeline_name: str, view_name: str, connector_name: str, action: str):
    """Pause a connector, or start a paused one where it stopped."""
    found = _load_pipeline(pipeline_name)
    connector = connectors_service.get_connector(found, view_name, connector_name)

    def act() -> str:
        if action == "pause":
            connectors_service.pause_connector(found, view_name, connector_name)
            return f"Connector '{connector_name}' paused: it keeps its place."
        connectors_service.start_connector(found, view_name, connector_name)
        return f"Connector '{connector_name}' started where it stopped."

    return _act(found, act, _anchor(connector))


@bp.route(f"{_CONNECTOR}/reset", methods=["POST"])
def reset_connector(pipeline_name: str, view_name: str, connector_name: str) -> Response:
    """Reset a connector (or find the reset already queued); its panel then shows the progress."""
    found = _load_pipeline(pipeline_name)
    connector = connectors_service.get_connector(found, view_name, connector_name)

    def act() -> str:
        resets_service.request_reset(found, view_name, connector_name)
        return f"Reset of connector '{connector_name}' queued; its progress shows below."

    return _act(found, act, _anchor(connector))


def _connector_reset(
    found: Pipeline, view_name: str, connector_name: str, reset_id: uuid.UUID
) -> tuple[Connector, Reset]:
    """A reset of the caller's connector, by its id (404 for another connector's, or none)."""
    connector = connectors_service.get_connector(found, view_name, connector_name)
    reset = db.session.get(Reset, reset_id)
    if reset is None or reset.connector_id != connector.id or not reset.token:
        raise NotFound(f"Connector '{connector_name}' has no such reset.")
    return connector, reset


@bp.route(f"{_CONNECTOR}/resets/<uuid:reset_id>/cancel", methods=["POST"])
def cancel_reset(
    pipeline_name: str, view_name: str, connector_name: str, reset_id: uuid.UUID
) -> Response:
    """Cancel a reset while its sink is untouched, as the API's reset_cancel does."""
    found = _load_pipeline(pipeline_name)
    connector, reset = _connector_reset(found, view_name, connector_name, reset_id)
    token = reset.token

    def act() -> str:
        try:
            resets_service.cancel_reset(current_tenant(), found.name, token)
        except ResetNotCancellable as exc:
            raise ResetNotCancellable(
                f"The reset of connector '{connector_name}' was not cancelled: {exc.message}.",
                details=exc.details,
            ) from None
        return (
            f"Reset of connector '{connector_name}' cancelled: the sink keeps what it had, "
            "and the connector streams on from where it stopped."
        )

    return _act(found, act, _anchor(connector))


@bp.route(f"{_CONNECTOR}/resets/<uuid:reset_id>/events")
def reset_events_stream(
    pipeline_name: str, view_name: str, connector_name: str, reset_id: uuid.UUID
) -> Response:
    """A reset's progress as Server-Sent Events, for its bar (the API's stream, by session).

    The browser sends the console's cookie to ``/console`` only, so the bar's
    stream is served here, by :func:`app.resets.events.stream` as the API's
    ``reset_status`` serves it. Any other answer (the reset ended with its
    incarnation, 503 beyond the cap) is a page, and makes the bar poll instead.
    """
    found = _load_pipeline(pipeline_name)
    _, reset = _connector_reset(found, view_name, connector_name, reset_id)
    return reset_events.stream(current_tenant(), found.name, reset.token)


@bp.route("/<path:unknown>", methods=["GET", "POST"])
def unknown_page(unknown: str) -> Any:
    """Anything else under /console: the console's own 404 page, not the API's JSON."""
    raise NotFound("There is no such page in the console.")
