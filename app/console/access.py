"""Who is using the console, and may they: sign-in, the session, CSRF tokens and roles.

Sign-in takes an API key once and checks it with the API's own check
(:func:`app.auth.service.handle_of_key`). The session is Flask's signed cookie
(itsdangerous): it holds the key's handle (row id, display prefix and console
generation), tenant, name and role, never the key. Every later request looks
the key up again by that handle (:func:`app.auth.service.principal_of_handle`),
so revoking a key or its expiry ends its sessions at the next request; so does
signing out, which moves the key's console generation on in the database (a
copy of the cookie is worth nothing after it). A session also ends
``PERMANENT_SESSION_LIFETIME`` after its sign-in. The cookie is ``HttpOnly``,
``SameSite=Strict``, sent to ``/console`` only, and ``Secure`` over TLS (see
``app/config.py`` and :class:`app.web.SessionInterface`).

Every POST carries a CSRF token: a random value kept in the session, signed
with a max age (itsdangerous) into each form, and compared with the session's
on the way back. A page of another site can neither read the token nor, with
``SameSite=Strict``, make the browser send the cookie. The sign-in form, shown
before there is a session, keeps its random value in a cookie of its own
(``console_sign_in``, as strict), so that showing it never overwrites a
session the browser holds but did not send. Only the console is concerned:
the JSON API takes bearer credentials and no cookie.

``ROUTE_ROLES`` declares the role each console route and method needs, like
:data:`app.auth.guard.ROUTE_ROLES` does for ``/v0``; tests/test_roles.py fails
for a console route missing from it. Templates ask :func:`may` before showing
a button, so a ``read`` key sees none that would answer 403.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any

from flask import current_app, g, request, session
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.exceptions import BadRequest, Forbidden

from app.auth import Principal
from app.auth.guard import role_declared_in, role_needed_in
from app.auth.models import Role
from app.auth.service import (
    KEY_PREFIX,
    KeyExpired,
    KeyHandle,
    end_console_sessions,
    handle_of_key,
    is_well_formed,
    principal_of_handle,
)

SESSION_KEY = "operator"
CSRF_KEY = "csrf"
CSRF_FIELD = "csrf_token"
CSRF_SALT = "pipeline-manager.console.csrf"
SIGN_IN_COOKIE = "console_sign_in"
SIGN_IN_SALT = "pipeline-manager.console.sign-in"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# A route anyone may reach, signed in or not.
PUBLIC = "public"
_READ, _WRITE = Role.READ, Role.WRITE
# The role each console endpoint needs, by method (HEAD needs what GET does).
ROUTE_ROLES: dict[str, dict[str, str]] = {
    "console.static": {"GET": PUBLIC},
    "console.sign_in": {"GET": PUBLIC, "POST": PUBLIC},
    "console.sign_out": {"POST": _READ},
    "console.index": {"GET": _READ},
    "console.pipeline": {"GET": _READ},
    "console.pipeline_panels": {"GET": _READ},
    "console.pipeline_action": {"POST": _WRITE},
    "console.connector_action": {"POST": _WRITE},
    "console.reset_connector": {"POST": _WRITE},
    "console.cancel_reset": {"POST": _WRITE},
    "console.reset_events_stream": {"GET": _READ},
    "console.unknown_page": {"GET": _READ, "POST": _READ},
}


class SignInFailed(Exception):
    """The key given at sign-in was refused; the message says why, for the operator."""


class CsrfRefused(BadRequest):
    """A form came back without this session's CSRF token (or with a stale one)."""

    description = (
        "The form was not sent from this console session (its security token is missing "
        "or has expired). Reload the page and try again."
    )


def declared_role(endpoint: str | None, method: str) -> str | None:
    """Return the role ``ROUTE_ROLES`` declares for an endpoint and method, or None."""
    return role_declared_in(ROUTE_ROLES, endpoint, method)


def required_role(endpoint: str | None, method: str) -> str:
    """The declared role; an undeclared route needs ``read`` to read and ``write`` otherwise."""
    return role_needed_in(ROUTE_ROLES, endpoint, method, SAFE_METHODS)


def key_name(principal: Principal) -> str:
    """The name of the API key the operator signed in with, as ``api-keys list`` shows it."""
    # A key's principal is named "apikey:<the key's name>" (app.auth.service).
    return principal.name.removeprefix("apikey:")


def may(endpoint: str, method: str = "POST") -> bool:
    """Whether the signed-in operator may use that endpoint (templates hide what they may not)."""
    principal: Principal | None = g.get("principal")
    needed = required_role(endpoint, method)
    if needed == PUBLIC:
        return True
    return principal is not None and Role.allows(principal.role, needed)


def _lifetime() -> int:
    return int(current_app.permanent_session_lifetime.total_seconds())


def sign_in(key: str) -> Principal:
    """Check an API key once and start a session for it; raise ``SignInFailed`` if refused."""
    key = key.strip()
    if not key:
        raise SignInFailed("Paste an API key to sign in.")
    if not is_well_formed(key):
        raise SignInFailed(
            f"That is not an API key: a key is '{KEY_PREFIX}' followed by 43 characters. "
            "Copy it whole."
        )
    try:
        found = handle_of_key(key)
    except KeyExpired as exc:
        when = exc.expires_at.isoformat(timespec="seconds")
        raise SignInFailed(f"That API key expired at {when}; ask an admin for a new one.") from None
    if found is None:
        raise SignInFailed("That API key is not valid (it may have been revoked).")
    handle, principal = found
    session.clear()
    session[SESSION_KEY] = {
        "id": handle.id,
        "prefix": handle.prefix,
        "generation": handle.generation,
        "tenant": principal.tenant,
        "name": principal.name,
        "role": principal.role,
        "at": int(time.time()),
    }
    # A new token for the new session: one seen before sign-in is worth nothing after.
    session[CSRF_KEY] = secrets.token_urlsafe(32)
    session.permanent = False
    return principal


def _handle() -> KeyHandle | None:
    data: Any = session.get(SESSION_KEY)
    if not isinstance(data, dict):
        return None
    try:
        return KeyHandle(int(data["id"]), str(data["prefix"]), int(data["generation"]))
    except (KeyError, TypeError, ValueError):
        return None


def sign_out() -> None:
    """End the key's console sessions, everywhere, and drop this one's cookie."""
    handle = _handle()
    if handle is not None:
        end_console_sessions(handle)
    session.clear()


def forget() -> None:
    """Drop a session that has already ended (the browser drops the cookie)."""
    session.clear()


def signed_in() -> bool:
    """Whether the request carries a console session (checked or not)."""
    return SESSION_KEY in session


def operator() -> Principal | None:
    """The signed-in operator, with the key checked again now; None when there is none.

    None too when the key was revoked, has expired, or the session is older
    than ``PERMANENT_SESSION_LIFETIME``.
    """
    data: Any = session.get(SESSION_KEY)
    if not isinstance(data, dict):
        return None
    handle = _handle()
    try:
        started = int(data["at"])
    except (KeyError, TypeError, ValueError):
        return None
    if handle is None:
        return None
    if not 0 <= time.time() - started <= _lifetime():
        return None
    try:
        principal = principal_of_handle(handle)
    except KeyExpired:
        return None
    if principal is None or principal.tenant != data.get("tenant"):
        return None
    return principal


def _serializer(salt: str = CSRF_SALT) -> URLSafeTimedSerializer:
    app = current_app
    # Signed with SECRET_KEY; tokens signed with a key being rotated out still verify.
    keys = [*app.config.get("SECRET_KEY_FALLBACKS", []), app.secret_key]
    return URLSafeTimedSerializer(keys, salt=salt)


def csrf_token() -> str:
    """The CSRF token for this session's forms (starting the session's secret if need be)."""
    raw = session.get(CSRF_KEY)
    if not isinstance(raw, str) or not raw:
        raw = session[CSRF_KEY] = secrets.token_urlsafe(32)
    return str(_serializer().dumps(raw))


def _check_token(raw: Any, salt: str) -> None:
    sent = request.form.get(CSRF_FIELD, "")
    if not sent or not isinstance(raw, str) or not raw:
        raise CsrfRefused()
    try:
        value = _serializer(salt).loads(sent, max_age=_lifetime())
    except BadData:
        raise CsrfRefused() from None
    if not isinstance(value, str) or not hmac.compare_digest(value, raw):
        raise CsrfRefused()


def check_csrf() -> None:
    """Raise ``CsrfRefused`` (400) unless the request carries this session's CSRF token."""
    _check_token(session.get(CSRF_KEY), CSRF_SALT)


def sign_in_token() -> tuple[str, str | None]:
    """The sign-in form's CSRF token, and a new ``console_sign_in`` cookie value if one is needed.

    The session is left alone: the browser may hold one that it did not send
    (a strict cookie stays home when another site led here).
    """
    raw = request.cookies.get(SIGN_IN_COOKIE, "")
    new = None
    if not 20 <= len(raw) <= 100:
        raw = new = secrets.token_urlsafe(32)
    return str(_serializer(SIGN_IN_SALT).dumps(raw)), new


def check_sign_in_csrf() -> None:
    """Raise ``CsrfRefused`` unless the sign-in form came with its token and cookie."""
    _check_token(request.cookies.get(SIGN_IN_COOKIE), SIGN_IN_SALT)


def refuse_role(needed: str, principal: Principal) -> Forbidden:
    """The 403 for a signed-in operator whose key lacks the role."""
    return Forbidden(
        f"This needs a {needed} key; you signed in with a {principal.role} key "
        f"('{key_name(principal)}'). Sign in with a {needed} key to do it."
    )
