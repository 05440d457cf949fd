"""The operator console (/console/), through Flask's test client.

Sign-in with an API key, the session cookie, CSRF tokens, roles, tenants, the
pages and their buttons, and errors as pages. tests/test_console_browser.py
drives the same console in a real browser.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.auth import service as auth_service
from app.auth.models import ApiKey
from app.console import access
from app.extensions import db
from tests.conftest import Api

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FLASH_RE = re.compile(r'<li class="flash flash-(\w+)"[^>]*>([^<]*)</li>')
PANEL = "/console/pipelines/orders/views/totals/connectors/sink1/panel"
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
    response = console.get(PANEL, headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/console/sign-in")
    page = console.get("/console/sign-in")
    assert page.status_code == 200 and 'name="api_key"' in page.get_data(as_text=True)


def test_sign_in_with_a_good_key_keeps_its_handle_not_the_key(app, console, make_key):
    key = _key(make_key("default", "write", name="ops"))
    response = console.sign_in(key)
    assert response.status_code == 303 and response.headers["Location"] == "/console/"
    html = console.page("/console/")
    assert "apikey:ops" in html and "write" in html
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


def test_the_list_pages_by_name(writer: Console, running_pipeline: Api, monkeypatch):
    from app.console import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
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
    assert 'data-field="delivered">0 records' in card
    assert "Last error" in card and "No resets yet." in card
    assert "out/totals.jsonl" in card
    # The panel is polled alone.
    response = writer.get(PANEL, headers={"HX-Request": "true"})
    assert response.status_code == 200
    fragment = response.get_data(as_text=True)
    assert fragment.lstrip().startswith('<div class="panel"') and "<html" not in fragment
    assert 'hx-trigger="every 5s"' in fragment


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
    assert 'hx-trigger="every 1s"' in html  # polled fast while it runs
    # The same reset the API shows, by the API's own reset_status.
    (reset,) = client.get("/v0/pipelines/orders/views/totals/connectors/sink1/resets").get_json()
    assert reset["status"] == "inprogress"
    # A second press while it is queued is the same reset.
    writer.post(RESET)
    assert (
        len(client.get("/v0/pipelines/orders/views/totals/connectors/sink1/resets").get_json()) == 1
    )

    assert run_resets() == 1
    fragment = writer.get(PANEL, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'data-status="complete" data-phase="done" data-percent="100"' in fragment
    assert '<progress max="100" value="100"' in fragment
    assert "30 / 30 snapshot records replayed" in fragment
    assert 'hx-trigger="every 5s"' in fragment
    assert re.search(r'<tr class="reset-row status-complete">', fragment)


def test_a_reset_of_an_ended_incarnation_is_history_not_progress(writer: Console, client):
    writer.page("/console/pipelines/orders")
    writer.post(RESET)
    writer.post("/console/pipelines/orders/restart")
    html = writer.page("/console/pipelines/orders")
    assert "<progress" not in html
    assert '<tr class="reset-row status-abandoned">' in html


# -- roles ------------------------------------------------------------------------------------


def test_a_read_key_sees_no_buttons(reader: Console):
    for path in ("/console/", "/console/pipelines/orders", PANEL):
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
    response = writer.get(
        "/console/pipelines/orders/views/totals/connectors/nope/panel",
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 404
    fragment = response.get_data(as_text=True)
    assert "panel-error" in fragment and "has no connector &#39;nope&#39;" in fragment
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
    response = writer.get(PANEL, headers={"HX-Request": "true"})
    assert response.status_code == 503
    assert 'hx-trigger="every 5s"' in response.get_data(as_text=True)


# -- what the browser loads -------------------------------------------------------------------


def test_pages_load_only_the_console_s_own_files(writer: Console):
    html = writer.page("/console/pipelines/orders")
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith(("/", "#")) for s in sources), sources
    assert "/console/static/htmx-2.0.11.min.js" in sources
    for path in (
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
    fragment = writer.get(PANEL, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert 'data-status="failed"' in fragment
    assert '<p class="flash flash-error reset-error">POST http://sink.example/in: 500' in fragment
    assert 'hx-trigger="every 5s"' in fragment


def test_the_vendored_htmx_is_the_release_unchanged():
    from pathlib import Path

    import app.console

    static = Path(app.console.__file__).parent / "static"
    digest = hashlib.sha256((static / app.console.HTMX_FILE).read_bytes()).hexdigest()
    assert digest == app.console.HTMX_SHA256
    assert "Zero-Clause BSD" in (static / "htmx-LICENSE.txt").read_text()
    base = (static.parent / "templates" / "console" / "base.html").read_text()
    assert f"filename='{app.console.HTMX_FILE}'" in base
