"""The operator console (/console/), through Flask's test client.

Sign-in with an API key, the session cookie, CSRF tokens, roles, tenants, the
pages and their buttons, and errors as pages. tests/test_console_browser.py
drives the same console in a real browser.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.auth import service as auth_service
from app.auth.models import ApiKey
from app.connectors import service as connectors_service
from app.console import access
from app.extensions import db
from app.pipelines import service as pipelines_service
from app.resets import service as resets_service
from tests.conftest import Api

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FLASH_RE = re.compile(r'<li class="flash flash-(\w+)"[^>]*>([^<]*)</li>')
POLL = "/console/pipelines/orders/panels"
HX = {"HX-Request": "true"}
RESET = "/console/pipelines/orders/views/totals/connectors/sink1/reset"


def _key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


class Console:
    """A browser-like client of the console: it keeps its cookie and reads CSRF tokens."""

    def __init__(self, app: Flask, base_url: str = "http://localhost") -> None:
        self.app = app
        self.client: FlaskClient = app.test_client()
        self.base_url = base_url
        self.token = ""

    def get(self, path: str, **kwargs: Any) -> Any:
        response = self.client.get(path, base_url=self.base_url, **kwargs)
        found = CSRF_RE.search(response.get_data(as_text=True))
        if found:
            self.token = found.group(1)
        return response

    def post(self, path: str, data: dict | None = None, token: bool = True, **kwargs: Any) -> Any:
        form = dict(data or {})
        if token:
            form.setdefault(access.CSRF_FIELD, self.token)
        return self.client.post(path, data=form, base_url=self.base_url, **kwargs)

    def sign_in(self, key: str, follow: bool = False) -> Any:
        self.get("/console/sign-in")
        response = self.post("/console/sign-in", {"api_key": key}, follow_redirects=follow)
        if response.status_code == 303:
            self.get(response.headers["Location"])
        return response

    def page(self, path: str) -> str:
        response = self.get(path)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_data(as_text=True)

    def session(self) -> dict:
        """The session the cookie holds, as the server reads it."""
        cookie = self.client.get_cookie(self.app.config["SESSION_COOKIE_NAME"], path="/console")
        if cookie is None:
            return {}
        serializer = self.app.session_interface.get_signing_serializer(self.app)
        return dict(serializer.loads(cookie.value))


def flashes(html: str) -> list[tuple[str, str]]:
    return [(kind, text.replace("&#39;", "'")) for kind, text in FLASH_RE.findall(html)]


def post_forms(html: str) -> list[str]:
    """The actions of the page's POST forms, sign-out left out."""
    actions = re.findall(r'<form method="post" action="([^"]+)"', html)
    return [a for a in actions if not a.endswith("/sign-out") and not a.endswith("/sign-in")]


@pytest.fixture
def console(app: Flask) -> Console:
    return Console(app)


@pytest.fixture
def writer(app: Flask, auth_headers, running_pipeline: Api) -> Console:
    """A console signed in with an admin key, on the running pipeline 'orders'."""
    c = Console(app)
    assert c.sign_in(_key(auth_headers)).status_code == 303
    return c


@pytest.fixture
def reader(app: Flask, read_headers, running_pipeline: Api) -> Console:
    c = Console(app)
    assert c.sign_in(_key(read_headers)).status_code == 303
    return c


# -- sign-in and the session ------------------------------------------------------------------


def test_pages_send_a_signed_out_browser_to_sign_in(console: Console):
    response = console.get("/console/")
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in"
    response = console.get("/console/pipelines/orders")
    assert response.headers["Location"] == "/console/sign-in?next=/console/pipelines/orders"
    # A poll (htmx) is told to load the sign-in page whole.
    response = console.get(POLL, headers=HX)
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/console/sign-in")
    page = console.get("/console/sign-in")
    assert page.status_code == 200 and 'name="api_key"' in page.get_data(as_text=True)


def test_sign_in_with_a_good_key_keeps_its_handle_not_the_key(app, console, make_key):
    key = _key(make_key("default", "write", name="ops"))
    console.get("/console/sign-in")
    response = console.post("/console/sign-in", {"api_key": key})
    assert response.status_code == 303 and response.headers["Location"] == "/console/"
    html = console.page("/console/")
    # The header names the key as `api-keys list` does, not as a credential.
    assert '<span class="key" title="API key">ops</span>' in html and "apikey:ops" not in html
    assert "write" in html
    assert ("info", "Signed in with the key 'ops' (write, tenant default).") in flashes(html)
    session = console.session()
    operator = session[access.SESSION_KEY]
    with app.app_context():
        row = db.session.execute(sa.select(ApiKey).where(ApiKey.name == "ops")).scalar_one()
        assert operator["id"] == row.id and operator["prefix"] == row.prefix == key[:13]
    assert operator["tenant"] == "default" and operator["role"] == "write"
    # Neither the key nor its hash is in the cookie.
    cookie = console.client.get_cookie("console_session", path="/console").value
    assert key not in repr(session) and key[7:] not in cookie
    assert auth_service.hash_key(key) not in repr(session)


def test_sign_in_goes_back_to_the_page_asked_for_but_never_off_the_console(app, make_key):
    key = _key(make_key("default", "read"))
    console = Console(app)
    page = console.page("/console/sign-in?next=/console/pipelines/orders")
    assert 'name="next" value="/console/pipelines/orders"' in page
    response = console.post(
        "/console/sign-in", {"api_key": key, "next": "/console/pipelines/orders"}
    )
    assert response.headers["Location"] == "/console/pipelines/orders"
    # Signed in already: the sign-in page goes straight on.
    assert console.get("/console/sign-in").headers["Location"] == "/console/"
    for elsewhere in ("https://evil.example/console/", "//evil.example/console/", "/v0/x"):
        console = Console(app)
        console.get("/console/sign-in")
        response = console.post("/console/sign-in", {"api_key": key, "next": elsewhere})
        assert response.headers["Location"] == "/console/", elsewhere


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "Paste an API key"),
        ("not-a-key", "That is not an API key"),
        ("apikey:" + "x" * 43, "That API key is not valid"),
    ],
)
def test_sign_in_with_a_bad_key_says_why_in_the_page(console, key, message):
    response = console.sign_in(key)
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert message in html and "sign-in-error" in html
    assert access.SESSION_KEY not in console.session()
    assert console.get("/console/").status_code == 303


def test_sign_in_with_a_revoked_or_expired_key_is_refused(app, console, make_key):
    key = _key(make_key("default", "write", name="gone"))
    with app.app_context():
        auth_service.revoke_key("default", "gone")
    assert "not valid" in console.sign_in(key).get_data(as_text=True)
    key = _key(make_key("default", "write", name="old"))
    with app.app_context():
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        db.session.execute(sa.update(ApiKey).where(ApiKey.name == "old").values(expires_at=past))
        db.session.commit()
    response = console.sign_in(key)
    assert response.status_code == 401 and "expired at" in response.get_data(as_text=True)


def test_revoking_the_key_ends_its_sessions_at_the_next_request(app, writer: Console):
    writer.page("/console/")
    with app.app_context():
        name = db.session.execute(sa.select(ApiKey.name)).scalars().first()
        auth_service.revoke_key("default", name)
    response = writer.get("/console/")
    assert response.status_code == 303 and response.headers["Location"] == "/console/sign-in"
    html = writer.page("/console/sign-in")
    assert ("error", flashes(html)[0][1]) == flashes(html)[0]
    assert "Your session has ended" in html
    assert access.SESSION_KEY not in writer.session()


def test_a_key_that_expires_ends_its_sessions(app, console, make_key):
    key = _key(make_key("default", "read", name="brief"))
    console.sign_in(key)
    assert console.get("/console/").status_code == 200
    with app.app_context():
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        db.session.execute(sa.update(ApiKey).where(ApiKey.name == "brief").values(expires_at=past))
        db.session.commit()
    assert console.get("/console/").status_code == 303


def test_a_session_ends_after_its_lifetime(app, console, make_key, monkeypatch):
    console.sign_in(_key(make_key("default", "read")))
    assert console.get("/console/").status_code == 200
    later = access.time.time() + app.permanent_session_lifetime.total_seconds() + 5
    monkeypatch.setattr(access.time, "time", lambda: later)
    assert console.get("/console/").status_code == 303


def test_a_session_of_a_deleted_key_whose_id_was_reused_is_not_the_new_key_s(app, console):
    with app.app_context():
        _, first = auth_service.create_key("default", "first", "admin")
    console.sign_in(first)
    with app.app_context():
        row_id = db.session.execute(sa.select(ApiKey.id)).scalar_one()
        auth_service.revoke_key("default", "first")
        auth_service.create_key("default", "second", "admin")
        db.session.execute(sa.update(ApiKey).values(id=row_id))  # the same id, another key
        db.session.commit()
    assert console.get("/console/").status_code == 303


def test_sign_out_ends_the_session(writer: Console):
    writer.page("/console/")
    response = writer.post("/console/sign-out")
    assert response.status_code == 303 and response.headers["Location"] == "/console/sign-in"
    assert access.SESSION_KEY not in writer.session()
    html = writer.page("/console/sign-in")
    assert ("info", "Signed out.") in flashes(html)
    assert writer.get("/console/").status_code == 303


def test_sign_out_ends_the_keys_sessions_a_copied_cookie_included(
    app, writer: Console, reader: Console, auth_headers
):
    name = app.config["SESSION_COOKIE_NAME"]
    copy = Console(app)  # the cookie, copied out of the browser before the sign-out
    copy.client.set_cookie(
        name, writer.client.get_cookie(name, path="/console").value, path="/console"
    )
    elsewhere = Console(app)  # the same key, signed in in another browser
    elsewhere.sign_in(_key(auth_headers))
    for c in (copy, elsewhere, reader):
        assert c.get("/console/").status_code == 200
    assert writer.post("/console/sign-out").status_code == 303
    assert copy.get("/console/").status_code == 303
    assert elsewhere.get("/console/").status_code == 303
    assert reader.get("/console/").status_code == 200  # another key's session goes on
    # Signing in again starts a session that works.
    assert writer.sign_in(_key(auth_headers)).status_code == 303
    assert writer.get("/console/").status_code == 200
    assert copy.get("/console/").status_code == 303


def test_the_cookie_is_httponly_samesite_strict_for_the_console_only(writer: Console, app):
    response = writer.client.post(
        "/console/sign-out", data={access.CSRF_FIELD: writer.token}
    )  # any answer that writes the session
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here


def test_the_cookie_is_secure_over_tls(app, make_key):
    tls = Console(app, base_url="https://localhost")
    response = tls.get("/console/sign-in")
    assert "Secure" in response.headers["Set-Cookie"]  # console_sign_in
    response = tls.post("/console/sign-in", {"api_key": _key(make_key("default", "read"))})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_the_api_ignores_the_console_session_and_sets_no_cookie(app, writer: Console, client):
    # A console session is no credential for the API...
    response = writer.client.get("/v0/pipelines")
    assert response.status_code == 401
    # ...and API calls (no cookie) get none, nor a Vary on it.
    response = client.get("/v0/pipelines")
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
    assert "Cookie" not in response.headers.get("Vary", "")
    # The API takes bearer credentials without any CSRF token.
    assert client.post("/v0/pipelines/orders/pause").status_code == 200


# -- CSRF -------------------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused(writer: Console, client):
    writer.page("/console/pipelines/orders")
    for path in ("/console/pipelines/orders/stop", RESET, "/console/sign-out"):
        response = writer.post(path, token=False)
        assert response.status_code == 400, path
        html = response.get_data(as_text=True)
        assert "security token is missing" in html and "Traceback" not in html
    assert client.get("/v0/pipelines/orders").get_json()["status"] == "running"
    assert access.SESSION_KEY in writer.session()  # still signed in


def test_a_forged_stale_or_foreign_csrf_token_is_refused(app, writer: Console, client, make_key):
    writer.page("/console/pipelines/orders")
    other = Console(app)
    other.sign_in(_key(make_key("default", "admin")))
    other.page("/console/pipelines/orders")
    for token in ("", "forged", writer.token + "x", other.token):
        response = writer.post("/console/pipelines/orders/stop", {access.CSRF_FIELD: token})
        assert response.status_code == 400, token
    # A token older than the session's lifetime.
    serializer = access.URLSafeTimedSerializer(app.secret_key, salt=access.CSRF_SALT)
    raw = writer.session()[access.CSRF_KEY]
    old = serializer.dumps(raw)
    with app.test_request_context():
        assert serializer.loads(old) == raw
    app.permanent_session_lifetime = dt.timedelta(seconds=-1)
    assert writer.post("/console/pipelines/orders/stop", {access.CSRF_FIELD: old}).status_code in (
        303,  # the session itself has ended (sign-in again)
        400,
    )
    assert client.get("/v0/pipelines/orders").get_json()["status"] == "running"


def test_sign_in_needs_the_csrf_token_of_the_sign_in_page(console, make_key):
    key = _key(make_key("default", "admin"))
    response = console.post("/console/sign-in", {"api_key": key}, token=False)
    assert response.status_code == 400
    assert console.get("/console/").status_code == 303


def test_each_sign_in_gets_a_new_csrf_secret(app, make_key):
    key = _key(make_key("default", "read"))
    secrets = []
    for _ in range(2):
        console = Console(app)
        console.sign_in(key)
        secrets.append(console.session()[access.CSRF_KEY])
    assert secrets[0] != secrets[1]


def test_the_sign_in_page_leaves_the_session_cookie_alone(app, writer: Console, make_key):
    """Shown to a browser that did not send its session (another site led it here)."""
    stranger = app.test_client()
    response = stranger.get("/console/sign-in")
    cookies = response.headers.getlist("Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith("console_sign_in=")
    assert "HttpOnly" in cookies[0] and "SameSite=Strict" in cookies[0]
    assert "Path=/console/sign-in" in cookies[0]
    # A refused key shows the form again, with the same cookie; a good one drops it.
    token = CSRF_RE.search(response.get_data(as_text=True)).group(1)
    response = stranger.post("/console/sign-in", data={"csrf_token": token, "api_key": "x"})
    assert response.status_code == 401
    assert "console_sign_in=" not in " ".join(response.headers.getlist("Set-Cookie"))
    token = CSRF_RE.search(response.get_data(as_text=True)).group(1)
    key = _key(make_key("default", "read"))
    response = stranger.post("/console/sign-in", data={"csrf_token": token, "api_key": key})
    assert response.status_code == 303
    dropped = [c for c in response.headers.getlist("Set-Cookie") if "console_sign_in=" in c]
    assert dropped and "Max-Age=0" in dropped[0]
    # The writer's own session was never touched.
    assert writer.get("/console/").status_code == 200


def test_a_page_another_site_led_to_is_loaded_again_from_here(console):
    headers = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    response = console.client.get("/console/pipelines/orders?x=1", headers=headers)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="0; url=/console/pipelines/orders?x=1">' in html
    assert "Set-Cookie" not in response.headers
    # From here (or with cookies), the page answers as usual.
    response = console.client.get(
        "/console/pipelines/orders", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert response.status_code == 303


# -- pages ------------------------------------------------------------------------------------


def test_the_list_shows_the_caller_s_pipelines_views_and_connectors(
    writer: Console, running_pipeline: Api, other_tenant_headers, app
):
    running_pipeline.create_pipeline("billing", views=("invoices", "refunds"))
    other = Api(app.test_client())
    other.client.environ_base["HTTP_AUTHORIZATION"] = other_tenant_headers["Authorization"]
    other.create_pipeline("secret-plans")
    html = writer.page("/console/")
    rows = re.findall(r'<tr data-pipeline="([^"]+)">', html)
    assert rows == ["billing", "orders"]
    orders = html[html.index('data-pipeline="orders"') :]
    assert "status-running" in orders and '<td class="num">1</td>' in orders
    assert ">totals<" in orders and ">sink1<" in orders
    billing = html[html.index('data-pipeline="billing"') : html.index('data-pipeline="orders"')]
    assert "stopped" in billing and ">invoices<" in billing and ">refunds<" in billing
    assert "secret-plans" not in html


def test_the_list_of_a_tenant_with_no_pipelines_says_so(console, make_key):
    console.sign_in(_key(make_key("default", "read")))
    assert "has no pipelines yet" in console.page("/console/")


def test_the_list_pages_by_name(writer: Console, running_pipeline: Api, app):
    app.config["CONSOLE_PAGE_SIZE"] = 2
    for name in ("a1", "a2", "a3"):
        running_pipeline.create_pipeline(name)
    html = writer.page("/console/")
    assert re.findall(r'data-pipeline="([^"]+)"', html) == ["a1", "a2"]
    assert "/console/?after=a2" in html
    html = writer.page("/console/?after=a2")
    assert re.findall(r'data-pipeline="([^"]+)"', html) == ["a3", "orders"]
    # A cursor that is no name is no cursor (never sent to the database).
    assert writer.get("/console/?after=%00").status_code == 200


def test_the_pipeline_page_shows_each_connector(writer: Console, running_pipeline: Api, client):
    client.post("/v0/pipelines/orders/views/totals/changes", json=[{"insert": {"n": 1}}])
    html = writer.page("/console/pipelines/orders")
    assert 'id="pipeline-status">running<' in html
    assert 'id="pipeline-incarnation">1<' in html
    card = html[html.index('data-connector="sink1"') :]
    assert 'data-field="health"' in card and 'data-field="sync_state">in_sync' in card
    assert re.search(r'data-field="lag">1 records', card)  # not delivered yet: no worker here
    assert 'data-field="sent">0 records sent (including replays) · 0 bytes' in card
    assert 'data-field="last_delivery">-<' in card
    assert "Last error" in card and "No resets yet." in card
    assert "out/totals.jsonl" in card
    # The page polls its panels with one request: the poller again, then each panel by id.
    assert html.count("hx-trigger=") == 1 and f'hx-get="{POLL}"' in html
    response = writer.get(POLL, headers=HX)
    assert response.status_code == 200
    fragment = response.get_data(as_text=True)
    assert fragment.lstrip().startswith('<p class="poller') and "<html" not in fragment
    assert 'hx-trigger="every 5s, console:refresh"' in fragment and f'hx-get="{POLL}"' in fragment
    assert re.findall(r'<div class="panel" id="(panel-\d+)" hx-swap-oob="true">', fragment) == (
        re.findall(r'<div class="panel" id="(panel-\d+)">', html)
    )
    assert re.search(r'data-field="lag">1 records', fragment)


def test_the_pipeline_page_shows_a_delivery_error(writer: Console, running_pipeline, app):
    with app.app_context():
        from app.connectors.models import Connector

        db.session.execute(
            sa.update(Connector).values(
                last_error="POST http://sink.example/in: 503",
                consecutive_failures=2,
                transport_errors=2,
            )
        )
        db.session.commit()
    html = writer.page("/console/pipelines/orders")
    assert "POST http://sink.example/in: 503" in html and "health-failing" in html


def test_lifecycle_buttons_follow_the_status_and_act(writer: Console, client):
    html = writer.page("/console/pipelines/orders")
    assert post_forms(html) == [
        "/console/pipelines/orders/pause",
        "/console/pipelines/orders/stop",
        "/console/pipelines/orders/restart",
        "/console/pipelines/orders/views/totals/connectors/sink1/pause",
        RESET,
    ]
    steps = [
        ("pause", "paused", 1, ["resume", "stop", "restart"]),
        ("resume", "running", 1, ["pause", "stop", "restart"]),
        ("restart", "running", 2, ["pause", "stop", "restart"]),
        ("stop", "stopped", 2, ["start"]),
        ("start", "running", 3, ["pause", "stop", "restart"]),
    ]
    for action, status, incarnation, buttons in steps:
        response = writer.post(f"/console/pipelines/orders/{action}")
        assert response.status_code == 303, action
        assert response.headers["Location"] == "/console/pipelines/orders"
        html = writer.page("/console/pipelines/orders")
        assert flashes(html)[-1][0] == "success", action
        assert f"incarnation {incarnation}" in flashes(html)[-1][1]
        body = client.get("/v0/pipelines/orders").get_json()
        assert (body["status"], body["incarnation"]) == (status, incarnation)
        lifecycle = [a.rsplit("/", 1)[1] for a in post_forms(html) if "/connectors/" not in a]
        assert lifecycle == buttons, action
    # Restart and stop ask first.
    assert 'hx-confirm="Stop pipeline' in html and 'hx-confirm="Restart pipeline' in html


def test_an_action_the_status_refuses_is_a_flash_message_not_an_error(writer: Console, client):
    writer.page("/console/pipelines/orders")
    response = writer.post("/console/pipelines/orders/resume")  # running: no resume button
    assert response.status_code == 303
    writer.post("/console/pipelines/orders/stop")
    html = writer.page("/console/pipelines/orders")
    assert "views/totals/connectors/sink1/reset" not in html  # no reset while stopped
    response = writer.post(RESET)  # sent anyway
    assert response.status_code == 303
    messages = flashes(writer.page("/console/pipelines/orders"))
    assert ("error", "Pipeline 'orders' is stopped; start it to reset a connector") in messages
    assert client.get("/v0/pipelines/orders").get_json()["status"] == "stopped"


def test_pause_and_start_a_connector(writer: Console, client):
    base = "/console/pipelines/orders/views/totals/connectors/sink1"
    writer.page("/console/pipelines/orders")
    response = writer.post(f"{base}/pause")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/console/pipelines/orders#connector-")
    api = "/v0/pipelines/orders/views/totals/connectors/sink1"
    assert client.get(api).get_json()["paused"] is True
    html = writer.page("/console/pipelines/orders")
    assert f"{base}/start" in post_forms(html) and f"{base}/pause" not in post_forms(html)
    assert "Connector 'sink1' paused" in flashes(html)[-1][1]
    writer.post(f"{base}/start")
    assert client.get(api).get_json()["paused"] is False


def test_reset_through_the_form_shows_progress_then_completion(
    writer: Console, running_pipeline: Api, client, run_resets
):
    changes = [{"insert": {"n": n}} for n in range(30)]
    client.post("/v0/pipelines/orders/views/totals/changes", json=changes)
    writer.page("/console/pipelines/orders")
    response = writer.post(RESET)
    assert response.status_code == 303
    html = writer.page("/console/pipelines/orders")
    assert "Reset of connector 'sink1' queued" in flashes(html)[-1][1]
    assert re.search(r'data-status="inprogress" data-phase="queued" data-percent="0"', html)
    assert '<progress max="100" value="0"' in html
    assert 'hx-trigger="every 1s, console:refresh"' in html  # polled fast while it runs
    # The same reset the API shows, by the API's own reset_status.
    (reset,) = client.get("/v0/pipelines/orders/views/totals/connectors/sink1/resets").get_json()
    assert reset["status"] == "inprogress"
    # A second press while it is queued is the same reset.
    writer.post(RESET)
    assert (
        len(client.get("/v0/pipelines/orders/views/totals/connectors/sink1/resets").get_json()) == 1
    )

    assert run_resets() == 1
    fragment = writer.get(POLL, headers=HX).get_data(as_text=True)
    assert 'data-status="complete" data-phase="done" data-percent="100"' in fragment
    assert '<progress max="100" value="100"' in fragment
    assert "30 / 30 snapshot records replayed" in fragment
    assert 'hx-trigger="every 5s, console:refresh"' in fragment
    assert re.search(r'<tr class="reset-row status-complete">', fragment)
    # The replayed records count as sent.
    sent = re.search(r'data-field="sent">([^<]*)<', fragment)
    assert sent and sent[1].startswith("30 records sent (including replays)"), (sent, fragment)


def test_the_last_delivery_is_a_replay_or_a_batch_whichever_came_later(
    writer: Console, running_pipeline: Api, client, app, run_resets
):
    from app.connectors.models import Connector

    def last_delivery() -> str:
        fragment = writer.get(POLL, headers=HX).get_data(as_text=True)
        return re.search(r'data-field="last_delivery">(.*?)</dd>', fragment).group(1)

    def streamed_at(when: dt.datetime) -> None:
        with app.app_context():
            db.session.execute(sa.update(Connector).values(last_delivered_at=when))
            db.session.commit()

    def utc(when: dt.datetime) -> str:
        return when.strftime("%Y-%m-%d %H:%M:%S UTC")

    client.post("/v0/pipelines/orders/views/totals/changes", json=[{"insert": {"n": 1}}])
    assert last_delivery() == "-"
    running_pipeline.reset()
    assert run_resets() == 1
    (reset,) = client.get("/v0/pipelines/orders/views/totals/connectors/sink1/resets").get_json()
    replayed = dt.datetime.fromisoformat(reset["completed_at"])
    by_replay = f'{utc(replayed)} <span class="muted">(a reset\'s replay)</span>'
    assert last_delivery() == by_replay
    streamed_at(replayed - dt.timedelta(minutes=1))
    assert last_delivery() == by_replay
    streamed_at(replayed + dt.timedelta(minutes=1))
    assert last_delivery() == utc(replayed + dt.timedelta(minutes=1))


def test_a_reset_of_an_ended_incarnation_is_history_not_progress(writer: Console, client):
    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    writer.post("/console/pipelines/orders/restart")
    html = writer.page("/console/pipelines/orders")
    assert "<progress" not in html
    assert '<tr class="reset-row status-abandoned">' in html


# -- cancelling a reset, and its bar's event stream -------------------------------------------

CANCEL_RE = re.compile(r'<form method="post" action="(/console/[^"]+/resets/[^"/]+/cancel)"')
EVENTS_RE = re.compile(r'data-events="([^"]+)"')
RESETS = "/v0/pipelines/orders/views/totals/connectors/sink1/resets"
SINK1 = "/console/pipelines/orders/views/totals/connectors/sink1"


def _cancel_url(html: str) -> str | None:
    found = CANCEL_RE.search(html)
    return found[1] if found else None


def test_a_queued_reset_has_a_cancel_button_that_cancels_it(writer: Console, client):
    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    html = writer.page("/console/pipelines/orders")
    (reset,) = client.get(RESETS).get_json()
    url = _cancel_url(html)
    assert url == f"{SINK1}/resets/{reset['reset_id']}/cancel"
    assert 'data-action="cancel-reset"' in html and "Its sink keeps what it had." in html
    # The poll shows it too, with the page it goes back to.
    assert _cancel_url(writer.get(POLL, headers=HX).get_data(as_text=True)) == url
    response = writer.post(url)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/console/pipelines/orders#connector-1")
    html = writer.page("/console/pipelines/orders")
    assert flashes(html)[-1] == (
        "success",
        "Reset of connector 'sink1' cancelled: the sink keeps what it had, "
        "and the connector streams on from where it stopped.",
    )
    (reset,) = client.get(RESETS).get_json()
    assert reset["status"] == "cancelled"
    assert 'data-status="cancelled"' in html and _cancel_url(html) is None
    assert not EVENTS_RE.search(html)  # an ended reset has no stream to follow


def test_a_reset_that_ended_meanwhile_flashes_why_it_was_not_cancelled(
    writer: Console, client, run_resets
):
    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    url = _cancel_url(writer.page("/console/pipelines/orders"))
    assert url and run_resets() == 1
    html = writer.page("/console/pipelines/orders")
    # Complete: nothing to cancel (else the reset's row says how its attempt ended).
    assert _cancel_url(html) is None, client.get(RESETS).get_json()
    response = writer.post(url, follow_redirects=True)
    assert response.status_code == 200
    assert flashes(response.get_data(as_text=True))[-1] == (
        "error",
        "The reset of connector 'sink1' was not cancelled: The reset is complete already.",
    )
    (reset,) = client.get(RESETS).get_json()
    assert reset["status"] == "complete"


def test_the_button_follows_what_reset_cancel_decides(writer: Console, api: Api, app, receiver):
    """An http sink told to reset cannot be cancelled: no button, and the API answers 409 too."""
    from app.resets.models import Reset

    api.client.post("/v0/pipelines/orders/stop")
    response = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": {"url": receiver.url}}},
    )
    assert response.status_code == 201, response.get_json()
    api.action("orders", "start")
    token = api.reset(connector="hook")
    html = writer.page("/console/pipelines/orders")
    url = _cancel_url(html)
    assert url and "/connectors/hook/resets/" in url  # queued: the sink is untouched
    # The executor took it on and told the sink to reset (in the session the requests share).
    db.session.execute(
        sa.update(Reset).values(started_at=dt.datetime.now(dt.UTC), phase="resetting_sink")
    )
    db.session.commit()
    html = writer.page("/console/pipelines/orders")
    assert 'data-phase="resetting_sink"' in html and _cancel_url(html) is None
    answer = api.client.post("/v0/pipelines/orders/reset_cancel", query_string={"token": token})
    assert answer.status_code == 409 and answer.get_json()["details"]["reason"] == "sink_reset"
    response = writer.post(url, follow_redirects=True)
    assert flashes(response.get_data(as_text=True))[-1] == (
        "error",
        "The reset of connector 'hook' was not cancelled: The sink was already told to "
        "reset; the reset runs on to the end.",
    )


def test_a_read_session_gets_no_cancel_button_and_403_on_post(
    reader: Console, writer: Console, client
):
    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    url = _cancel_url(writer.page("/console/pipelines/orders"))
    html = reader.page("/console/pipelines/orders")
    assert 'data-status="inprogress"' in html and _cancel_url(html) is None
    assert "Cancel</button>" not in html
    response = reader.post(url)
    assert response.status_code == 403
    assert "needs a write key" in response.get_data(as_text=True)
    (reset,) = client.get(RESETS).get_json()
    assert reset["status"] == "inprogress"


def test_another_connector_s_reset_is_not_found(writer: Console, client):
    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    url = _cancel_url(writer.page("/console/pipelines/orders"))
    for other in (
        url.replace("/connectors/sink1/", "/connectors/nope/"),
        re.sub(r"/resets/[^/]+/", "/resets/00000000-0000-4000-8000-000000000000/", url),
        re.sub(r"/resets/[^/]+/", "/resets/not-a-uuid/", url),
    ):
        response = writer.post(other)
        assert response.status_code == 404 and response.mimetype == "text/html", other
    (reset,) = client.get(RESETS).get_json()
    assert reset["status"] == "inprogress"


def _events(text: str) -> list[tuple[str, dict]]:
    blocks = [b for b in text.split("\n\n") if b.startswith("event: ")]
    found = []
    for block in blocks:
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((fields["event"], json.loads(fields["data"])))
    return found


def test_a_running_bar_streams_the_api_s_status_by_the_session(
    writer: Console, reader: Console, client, run_resets
):
    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    html = writer.page("/console/pipelines/orders")
    (url,) = EVENTS_RE.findall(html)
    (reset,) = client.get(RESETS).get_json()
    assert url == f"{SINK1}/resets/{reset['reset_id']}/events"
    run_resets()
    # A second reset queued: the bar's stream is still the first one's.
    assert client.post(RESET.replace("/console", "/v0")).status_code == 202
    for console in (writer, reader):  # read access is enough, as for reset_status
        response = console.get(url)
        assert response.status_code == 200 and response.mimetype == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-store"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        ((kind, data),) = _events(response.get_data(as_text=True))
        assert kind == "status" and data["status"] == "complete"
        assert data["reset_id"] == reset["reset_id"]
    # No session, no stream (and the API takes no cookie: see the session tests above).
    response = Console(writer.app).get(url)
    assert response.status_code == 303


def test_beyond_the_streams_a_process_serves_the_bar_gets_503_and_polls(
    writer: Console, app: Flask
):
    from app.resets import events

    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    (url,) = EVENTS_RE.findall(writer.page("/console/pipelines/orders"))
    app.extensions[events._SLOTS_KEY] = events._Slots(0)
    response = writer.get(url)
    assert response.status_code == 503 and response.mimetype == "text/html"
    assert response.headers["Retry-After"] == str(app.config["RETRY_AFTER_SECONDS"])
    assert "retry later, or poll reset_status" in response.get_data(as_text=True)


# -- many connectors: a page at a time, one poll a page ---------------------------------------

CARD_RE = re.compile(r'<article class="connector card" id="connector-\d+" data-view="([^"]+)"')
SHOWN_RE = re.compile(r'data-view="([^"]+)" data-connector="([^"]+)"')
OOB_RE = re.compile(r'<div class="panel" id="(panel-\d+)" hx-swap-oob="true">')
PANEL_RE = re.compile(r'<div class="panel" id="(panel-\d+)">')


def _many_connectors(
    app: Flask, counts: dict[str, int], name: str = "big", start: bool = False
) -> list[tuple[str, str]]:
    """Create pipeline ``name`` whose views have that many file connectors each (through the
    service, about a millisecond a connector); return their (view, connector) keys in page
    order: by view name, then connector name."""
    with app.app_context():
        found = pipelines_service.create_pipeline("default", name, "", list(counts))
        for view, count in counts.items():
            for n in range(count):
                config = {"path": f"{name}/{view}/c{n:03d}.jsonl"}
                connectors_service.add_connector(
                    found, view, f"c{n:03d}", {"name": "file", "config": config}
                )
        if start:
            pipelines_service.start(found)
        db.session.remove()
    return sorted((view, f"c{n:03d}") for view, count in counts.items() for n in range(count))


def shown(html: str) -> list[tuple[str, str]]:
    """The (view, connector) of each connector card on a page, in order."""
    return SHOWN_RE.findall(html)


def link(html: str, page: str) -> str | None:
    """The href of the page's ``next``, ``previous`` or ``first`` link, if it has one."""
    found = re.search(rf'href="([^"]+)" data-page="{page}"', html)
    return found.group(1).replace("&amp;", "&") if found else None


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """Record the SQL statements the app's engine runs meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_a_pipeline_with_many_connectors_shows_one_page_and_links_to_the_next(writer: Console, app):
    keys = _many_connectors(app, {"beta": 50, "alpha": 70})
    assert app.config["CONSOLE_PAGE_SIZE"] == 25  # the default
    html = writer.page("/console/pipelines/big")
    assert shown(html) == keys[:25]  # view alpha first (by name), then by connector name
    assert "Connectors 1 to 25 of 120 · page 1 of 5" in html
    assert link(html, "next") == "/console/pipelines/big?after=alpha.c024"
    assert link(html, "previous") is None and link(html, "first") is None
    # Every view is named with its count, the ones not on this page too.
    assert re.search(r'<span class="view">beta</span> 50 connectors', html)
    assert re.search(r'<span class="view">alpha</span> 70 connectors', html)
    assert html.count("<article ") == 25 and html.count("hx-trigger=") == 1


def test_the_second_page_shows_the_rest_and_links_back(writer: Console, app):
    app.config["CONSOLE_PAGE_SIZE"] = 100
    keys = _many_connectors(app, {"alpha": 70, "beta": 50})
    html = writer.page("/console/pipelines/big")
    assert shown(html) == keys[:100]
    assert "Connectors 1 to 100 of 120 · page 1 of 2" in html
    html = writer.page(link(html, "next"))
    assert shown(html) == keys[100:] == [("beta", f"c{n:03d}") for n in range(30, 50)]
    assert "Connectors 101 to 120 of 120 · page 2 of 2" in html
    assert link(html, "next") is None
    assert link(html, "previous") == "/console/pipelines/big"


def test_paging_walks_every_connector_once_forward_and_back(writer: Console, app):
    keys = _many_connectors(app, {"alpha": 70, "beta": 0, "gamma": 50})
    pages, url = [], "/console/pipelines/big"
    while url:
        html = writer.page(url)
        pages.append((url, shown(html)))
        assert f"page {len(pages)} of 5" in html
        url = link(html, "next")
    assert [key for _, page in pages for key in page] == keys
    assert [len(page) for _, page in pages] == [25, 25, 25, 25, 20]
    # Back from the last page, each previous page is the one seen going forward.
    html = writer.page(pages[-1][0])
    for url, page in reversed(pages[:-1]):
        assert link(html, "previous") == url
        html = writer.page(url)
        assert shown(html) == page
    assert link(html, "previous") is None
    assert 'class="view">beta</span> 0 connectors' in html


def test_the_page_size_setting_is_honoured(writer: Console, app):
    keys = _many_connectors(app, {"alpha": 20})
    app.config["CONSOLE_PAGE_SIZE"] = 7
    html = writer.page("/console/pipelines/big")
    assert shown(html) == keys[:7] and "page 1 of 3" in html
    html = writer.page(link(html, "next"))
    assert shown(html) == keys[7:14]
    poll = writer.get(link(html, "next").replace("big?", "big/panels?"), headers=HX)
    assert len(OOB_RE.findall(poll.get_data(as_text=True))) == 6
    # The pipeline list pages by it too.
    assert re.findall(r'<tr data-pipeline="([^"]+)">', writer.page("/console/")) == [
        "big",
        "orders",
    ]
    app.config["CONSOLE_PAGE_SIZE"] = 1
    assert re.findall(r'<tr data-pipeline="([^"]+)">', writer.page("/console/")) == ["big"]


def test_a_poll_refreshes_the_page_s_connectors_and_no_others(writer: Console, app):
    _many_connectors(app, {"alpha": 60})
    first = writer.page("/console/pipelines/big")
    second = writer.page(link(first, "next"))
    poller = re.search(r'hx-get="([^"]+)" hx-trigger="every 5s, console:refresh"', second).group(1)
    assert poller == "/console/pipelines/big/panels?after=alpha.c024"
    assert second.count("hx-trigger=") == 1  # one poller for the page, none per connector
    fragment = writer.get(poller, headers=HX).get_data(as_text=True)
    assert OOB_RE.findall(fragment) == PANEL_RE.findall(second)
    assert len(set(OOB_RE.findall(fragment)) & set(PANEL_RE.findall(first))) == 0
    # Panels only (stats, progress, history): no cards, no buttons, no tokens.
    assert "<article" not in fragment and "<form" not in fragment and "csrf" not in fragment
    assert fragment.count('id="poller"') == 1 and 'hx-sync="this:drop"' in fragment


def _reset_every_other(app: Flask, name: str = "big") -> None:
    """Queue a reset of every other connector of the (running) pipeline."""
    from app.connectors.models import Connector

    with app.app_context():
        found = pipelines_service.get_pipeline("default", name)
        for view in found.views:
            rows = connectors_service.list_connectors(view)
            for connector in rows[::2]:
                resets_service.request_reset(found, view.name, connector.name)
        assert db.session.execute(sa.select(sa.func.count()).select_from(Connector)).scalar()
        db.session.remove()


def test_a_poll_runs_the_same_few_statements_for_5_or_50_connectors(writer: Console, app, client):
    _many_connectors(app, {"alpha": 30, "beta": 60}, start=True)
    _reset_every_other(app)
    client.post("/v0/pipelines/big/views/alpha/changes", json=[{"insert": {"n": 1}}])
    counts = {}
    # The first page (one view), and one that starts near a view's end (both views).
    for path in ("/console/pipelines/big/panels", "/console/pipelines/big/panels?after=alpha.c028"):
        for size in (5, 50):
            app.config["CONSOLE_PAGE_SIZE"] = size
            with statements(app) as seen:
                response = writer.get(path, headers=HX)
            assert response.status_code == 200
            fragment = response.get_data(as_text=True)
            assert len(OOB_RE.findall(fragment)) == size
            assert "<progress" in fragment  # the resets' progress is there
            counts[path, size] = len(seen)
        # The session's key, the pipeline, the page's connectors (the rest of a view, then
        # the next views), their views' log ends, their resets: never one per connector.
        assert counts[path, 5] == counts[path, 50] <= 6, counts
    # The whole page too: its cost does not grow with the page, nor with the pipeline.
    pages = {}
    for size in (5, 50):
        app.config["CONSOLE_PAGE_SIZE"] = size
        for path in ("/console/pipelines/big", "/console/pipelines/big?after=alpha.c028"):
            with statements(app) as seen:
                assert writer.get(path).status_code == 200
            pages[path, size] = len(seen)
    # A later page adds its place (a COUNT) and the previous page's cursor (a walk back of
    # at most one page, in one or two statements).
    assert pages["/console/pipelines/big", 5] == pages["/console/pipelines/big", 50] <= 6, pages
    assert max(pages.values()) <= 10, pages


def test_the_list_counts_a_big_view_and_names_a_small_one(writer: Console, app):
    from app.connectors.models import Connector

    with statements(app) as few:
        writer.page("/console/")
    _many_connectors(app, {"alpha": 120, "beta": 3})
    with app.app_context():
        db.session.execute(sa.update(Connector).where(Connector.name < "c002").values(paused=True))
        db.session.execute(
            sa.update(Connector).where(Connector.name == "c005").values(sync_state="failed")
        )
        db.session.commit()
    with statements(app) as many:
        html = writer.page("/console/")
    big = html[html.index('data-pipeline="big"') : html.index('data-pipeline="orders"')]
    alpha = big[big.index('data-view="alpha"') : big.index('data-view="beta"')]
    assert 'data-field="connectors">120 connectors' in alpha and ">c000<" not in alpha
    assert ">2 paused<" in alpha and ">1 failed<" in alpha
    beta = big[big.index('data-view="beta"') :]
    assert [n for n in ("c000", "c001", "c002") if f">{n}</span>" in beta] == [
        "c000",
        "c001",
        "c002",
    ]
    # Counted in SQL: no more statements for 123 connectors than for 1.
    assert len(many) == len(few)


def test_a_button_on_a_later_page_comes_back_to_that_page(writer: Console, app):
    _many_connectors(app, {"alpha": 30}, start=True)
    html = writer.page("/console/pipelines/big?after=alpha.c024")
    assert shown(html) == [("alpha", f"c{n:03d}") for n in range(25, 30)]
    forms = re.findall(r'<input type="hidden" name="after" value="([^"]+)">', html)
    assert forms and set(forms) == {"alpha.c024"}  # every button, lifecycle ones too
    base = "/console/pipelines/big"
    response = writer.post(f"{base}/views/alpha/connectors/c027/reset", {"after": "alpha.c024"})
    assert re.fullmatch(rf"{base}\?after=alpha\.c024#connector-\d+", response.headers["Location"])
    response = writer.post(f"{base}/pause", {"after": "alpha.c024"})
    assert response.headers["Location"] == f"{base}?after=alpha.c024"
    # Anything that is no cursor goes back to the first page.
    response = writer.post(f"{base}/resume", {"after": "//evil.example/x"})
    assert response.headers["Location"] == base


def test_a_cursor_that_is_no_connector_s_is_the_first_page_or_an_empty_one(writer: Console, app):
    keys = _many_connectors(app, {"alpha": 30})
    for after in ("%00", "alpha", "a.b.c", "alpha.", ".c001", "x" * 200 + ".c001"):
        html = writer.page(f"/console/pipelines/big?after={after}")
        assert shown(html) == keys[:25], after
    html = writer.page("/console/pipelines/big?after=alpha.zzz")  # after the last one
    assert shown(html) == [] and "No connectors after this page." in html
    assert 'href="/console/pipelines/big">Back to the first page' in html
    assert "hx-trigger" not in html  # nothing to poll


def test_a_panel_shows_what_the_api_serves(
    app, running_pipeline: Api, client, writer: Console, run_resets
):
    """The panels' numbers are computed a page at a time; they must be the API's."""
    from app.console import panels
    from app.delivery import service as delivery_service
    from app.errors import ApiError

    client.post(
        "/v0/pipelines/orders/views/totals/changes",
        json=[{"insert": {"n": n}} for n in range(30)],
    )
    token = running_pipeline.reset()

    def compare() -> dict | None:
        # The test's app context (pytest-flask's) outlives each request: its session would
        # hand back the rows it loaded last time. A request of the console starts afresh.
        db.session.remove()
        with app.test_request_context():
            found = pipelines_service.get_pipeline("default", "orders")
            connector = connectors_service.get_connector(found, "totals", "sink1")
            (panel,) = panels.load_panels(found, [connector])
            stats = delivery_service.connector_stats(found, "totals", "sink1")
            for field in ("health", "queued_records", "log_end"):
                assert panel["stats"][field] == stats[field], field
            progress = panel["progress"]
            try:
                status = resets_service.reset_status("default", "orders", token)
            except ApiError:
                assert progress is None  # reset_status refuses the token: no bar either
                return None
            for field in ("status", "phase", "snapshot_records", "replayed_records", "error"):
                assert progress[field] == status[field], field
            assert progress["requested_at"].isoformat() == status["requested_at"]
            return progress

    assert compare()["status"] == "inprogress"
    assert run_resets() == 1
    assert compare()["percent"] == 100
    running_pipeline.action("orders", "restart")
    assert compare() is None
    running_pipeline.action("orders", "stop")
    assert compare() is None


# -- roles ------------------------------------------------------------------------------------


def test_a_read_key_sees_no_buttons(reader: Console):
    for path in ("/console/", "/console/pipelines/orders", POLL):
        html = reader.page(path)
        assert post_forms(html) == [], path
        assert "Reset</button>" not in html and "Stop</button>" not in html
    assert 'id="sign-out"' in reader.page("/console/")


def test_a_post_from_a_read_session_answers_403_anyway(reader: Console, client):
    reader.page("/console/pipelines/orders")
    for path in (
        "/console/pipelines/orders/stop",
        "/console/pipelines/orders/restart",
        RESET,
        "/console/pipelines/orders/views/totals/connectors/sink1/pause",
    ):
        response = reader.post(path)
        assert response.status_code == 403, path
        html = response.get_data(as_text=True)
        assert "Not allowed" in html and "needs a write key" in html
    assert client.get("/v0/pipelines/orders").get_json()["status"] == "running"
    resets = client.get("/v0/pipelines/orders/views/totals/connectors/sink1/resets").get_json()
    assert resets == []


# -- tenants ----------------------------------------------------------------------------------


def _console_pipeline_routes(app) -> list[tuple[str, str]]:
    return [
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/console") and "<pipeline_name>" in rule.rule
        for method in sorted(rule.methods - {"OPTIONS", "HEAD"})
    ]


def _fill(rule: str, pipeline: str) -> str:
    return (
        rule.replace("<pipeline_name>", pipeline)
        .replace("<view_name>", "totals")
        .replace("<connector_name>", "sink1")
        .replace("<any(start, stop, pause, resume, restart):action>", "stop")
        .replace("<any(pause, start):action>", "pause")
        .replace("<uuid:reset_id>", "00000000-0000-4000-8000-000000000000")
    )


def test_another_tenant_s_pipeline_answers_like_an_unknown_one(
    app, running_pipeline: Api, other_tenant_headers, client
):
    other = Console(app)
    other.sign_in(_key(other_tenant_headers))
    routes = _console_pipeline_routes(app)
    assert len(routes) >= 5
    for method, rule in routes:
        answers = []
        for name in ("orders", "absent"):
            other.page("/console/")
            if method == "GET":
                response = other.get(_fill(rule, name))
            else:
                response = other.post(_fill(rule, name))
            html = response.get_data(as_text=True).replace(name, "NAME")
            html = CSRF_RE.sub("", html)
            answers.append((response.status_code, html))
        assert answers[0] == answers[1], (method, rule)
        assert answers[0][0] == 404, (method, rule)
        assert "Not found" in answers[0][1] and "Traceback" not in answers[0][1]
    body = client.get("/v0/pipelines/orders").get_json()
    assert body["status"] == "running" and body["incarnation"] == 1
    assert client.get("/v0/pipelines/orders/views/totals/connectors/sink1/resets").get_json() == []


# -- errors -----------------------------------------------------------------------------------


def test_unknown_console_paths_are_pages_not_json(writer: Console):
    for path in (
        "/console/nothing",
        "/console/pipelines/orders/views",
        "/console/pipelines/orders/stop",
    ):
        response = writer.get(path)
        assert response.status_code == 404, path
        assert response.mimetype == "text/html"
    response = writer.get("/console/pipelines/gone/panels", headers=HX)
    assert response.status_code == 404
    fragment = response.get_data(as_text=True)
    assert "panel-error" in fragment and "Unknown pipeline name &#39;gone&#39;" in fragment
    assert "hx-trigger" not in fragment  # a 404 stops the polling


def test_a_bug_is_a_friendly_page_with_a_request_id(writer: Console, monkeypatch):
    from app.console import views

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views.pipelines_service, "list_pipelines", broken)
    response = writer.get("/console/")
    assert response.status_code == 500 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "Something went wrong" in html and response.headers["X-Request-Id"] in html
    assert "secret internals" not in html and "Traceback" not in html


def test_a_busy_database_is_a_503_page(writer: Console, monkeypatch, app):
    from sqlalchemy.exc import OperationalError

    from app.console import views

    def busy(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(views.pipelines_service, "get_pipeline", busy)
    response = writer.get("/console/pipelines/orders")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "The database is busy" in response.get_data(as_text=True)
    # A poll keeps polling, slower.
    response = writer.get(POLL, headers=HX)
    assert response.status_code == 503
    assert 'hx-trigger="every 5s"' in response.get_data(as_text=True)


# -- what the browser loads -------------------------------------------------------------------


def test_pages_load_only_the_console_s_own_files(writer: Console):
    html = writer.page("/console/pipelines/orders")
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith(("/", "#")) for s in sources), sources
    assert "/console/static/htmx-2.0.11.min.js" in sources
    assert "/console/static/console.js" in sources
    for path in (
        "/console/static/console.js",
        "/console/static/htmx-2.0.11.min.js",
        "/console/static/htmx-LICENSE.txt",
        "/console/static/console.css",
    ):
        response = writer.get(path)
        assert response.status_code == 200, path
        response.close()
    response = writer.get("/console/pipelines/orders")
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    # No inline script or style that the policy would block.
    assert "<script>" not in html and " style=" not in html


def test_static_files_need_no_session(console):
    response = console.get("/console/static/console.css")
    assert response.status_code == 200
    response.close()


def test_a_failed_reset_shows_its_error(writer: Console, app):
    from app.resets.models import Reset

    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    with app.app_context():
        db.session.execute(
            sa.update(Reset).values(
                status="failed",
                queued_connector_id=None,
                completed_at=dt.datetime.now(dt.UTC),
                error="POST http://sink.example/in: 500",
            )
        )
        db.session.commit()
    fragment = writer.get(POLL, headers=HX).get_data(as_text=True)
    assert 'data-status="failed"' in fragment
    assert '<p class="flash flash-error reset-error">POST http://sink.example/in: 500' in fragment
    assert 'hx-trigger="every 5s, console:refresh"' in fragment


def test_the_vendored_htmx_is_the_release_unchanged():
    from pathlib import Path

    import app.console

    static = Path(app.console.__file__).parent / "static"
    digest = hashlib.sha256((static / app.console.HTMX_FILE).read_bytes()).hexdigest()
    assert digest == app.console.HTMX_SHA256
    assert "Zero-Clause BSD" in (static / "htmx-LICENSE.txt").read_text()
    base = (static.parent / "templates" / "console" / "base.html").read_text()
    assert f"filename='{app.console.HTMX_FILE}'" in base
