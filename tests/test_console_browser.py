"""The operator console in a real browser: headless Debian Chromium driven by Playwright.

As in tests/test_browser.py: no browser download, and where ``/usr/bin/chromium``
is missing the tests skip, except under CI (``CI=true``), where they fail. The
app is served over real HTTP on 127.0.0.1, with the worker loop (resets and
delivery) running in a thread of the test, as a serving process runs it. The
screenshots land in tests/artifacts/ (git-ignored); the README shows one of
them, kept in docs/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import make_server

from app import worker
from app.connectors.models import Connector
from app.extensions import db
from app.resets import events
from tests.chromium import ARTIFACTS_DIR, local_page
from tests.chromium import browser as browser
from tests.conftest import Api
from tests.receiver import Receiver

# Records in the view, replayed this many per batch: enough batches to watch the bar move.
RECORDS = 2_000
REPLAY_BATCH = 100
SECONDS_PER_SNAPSHOT_BATCH = 0.12

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser) -> Iterator[Any]:
    """A fresh browser page (own cookies) where only this machine can be reached.

    Confirmation dialogs (htmx's hx-confirm) are accepted, as an operator would.
    """
    context, page = local_page(browser, viewport={"width": 1200, "height": 820})
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def _screenshot(page: Any, name: str) -> Path:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / name
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Small replay batches, a quick worker and a quick event stream: a reset can be watched."""
    return {
        **app_config,
        "REPLAY_BATCH_SIZE": REPLAY_BATCH,
        "WORKER_POLL_INTERVAL": 0.05,
        "DELIVERY_CONCURRENCY": 1,
        "EVENT_STREAM_POLL_SECONDS": 0.2,
    }


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    """Serve the app on a localhost port; return its base URL."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def background_worker(app: Flask) -> Iterator[Any]:
    """Start the worker loop (resets, delivery) in this process when asked; stop it after."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start() -> None:
        thread = threading.Thread(target=worker.run_loop, args=(app, stop), daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=30)


class SlowReceiver(Receiver):
    """The reference http receiver, taking its time over each snapshot batch of a reset."""

    def _handle(self, message: dict[str, Any], headers: dict[str, str]) -> str:
        if message.get("type") == "snapshot":
            time.sleep(SECONDS_PER_SNAPSHOT_BATCH)
        return super()._handle(message, headers)


@pytest.fixture
def slow_receiver() -> Iterator[SlowReceiver]:
    with SlowReceiver() as receiver:
        yield receiver


def _key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _sign_in(page: Any, base: str, key: str) -> None:
    """Open the console, get sent to sign-in, sign in with the key."""
    page.goto(f"{base}/console/")
    page.locator("#api_key").wait_for()
    assert page.url.startswith(f"{base}/console/sign-in")
    page.fill("#api_key", key)
    page.get_by_role("button", name="Sign in").click()
    page.locator("h1", has_text="Pipelines").wait_for()


def _http_pipeline(api: Api, receiver: Receiver) -> None:
    """Pipeline 'orders' running, its connector 'sink1' sending to the receiver, RECORDS in."""
    api.create_pipeline("orders", views=("totals",))
    response = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "sink1", "transport": {"name": "http", "config": {"url": receiver.url}}},
    )
    assert response.status_code == 201, response.get_json()
    api.action("orders", "start")
    changes = [{"insert": {"id": n, "total": n % 97}} for n in range(RECORDS)]
    response = api.client.post("/v0/pipelines/orders/views/totals/changes", json=changes)
    assert response.status_code == 200, response.get_json()


def _requests_to(page: Any, part: str) -> list[tuple[float, str]]:
    """(when, URL) of each request the page sends to a URL containing ``part``, as it goes."""
    seen: list[tuple[float, str]] = []
    page.on("request", lambda r: seen.append((time.monotonic(), r.url)) if part in r.url else None)
    return seen


def _watch_to_the_end(page: Any, card: Any, midway: str | None = None) -> list[int]:
    """The percents the card's bar shows until its reset completes (read every 100 ms).

    ``midway``: the name of a screenshot taken once the bar is between 15 and 85%.
    """
    seen: list[int] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        # Both from one element at once: a poll may swap the bar in between two reads.
        percent_text, status = card.locator(".reset-progress").evaluate(
            "bar => [bar.dataset.percent, bar.dataset.status]"
        )
        percent = int(percent_text or 0)
        if not seen or seen[-1] != percent:
            seen.append(percent)
        if midway and 15 <= percent <= 85:
            _screenshot(page, midway)
            midway = None
        if status == "complete":
            break
        assert status == "inprogress", card.inner_text()
        page.wait_for_timeout(100)
    assert card.locator(".reset-progress").get_attribute("data-status") == "complete", seen
    return seen


def test_sign_in_see_a_pipeline_and_watch_a_reset_reach_100_percent(
    page, server, api: Api, auth_headers, slow_receiver, background_worker
):
    """The bar moves with the reset's event stream; the page polls at its idle pace meanwhile."""
    _http_pipeline(api, slow_receiver)
    polls = _requests_to(page, "/panels")
    streams = _requests_to(page, "/events")
    _sign_in(page, server, _key(auth_headers))
    row = page.locator('tr[data-pipeline="orders"]')
    assert "running" in row.inner_text() and "sink1" in row.inner_text()
    cookie = next(c for c in page.context.cookies() if c["name"] == "console_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert not cookie["secure"]  # plain HTTP here
    assert _key(auth_headers) not in cookie["value"]
    _screenshot(page, "console-pipelines.png")

    row.get_by_role("link", name="orders").click()
    page.locator("#pipeline-status", has_text="running").wait_for()
    card = page.locator('article[data-connector="sink1"]')
    assert "in_sync" in card.inner_text()
    card.get_by_role("button", name="Reset").click()  # and accept the confirmation
    progress = card.locator(".reset-progress")
    progress.wait_for()
    assert page.locator(".flash-success", has_text="Reset of connector 'sink1' queued").count()
    assert progress.get_attribute("data-status") == "inprogress"
    assert progress.get_attribute("data-phase") == "queued"
    assert card.locator("progress").get_attribute("value") == "0"
    assert "every 1s" in page.locator("#poller").get_attribute("hx-trigger")
    # The bar's stream is open (EventSource, with the session's cookie) before the reset runs.
    page.wait_for_function("() => document.querySelector('.reset-progress').dataset.events")
    page.wait_for_timeout(300)
    assert [url for _, url in streams] == [server + progress.get_attribute("data-events")]

    background_worker()  # the worker takes the reset on
    began = time.monotonic()
    seen = _watch_to_the_end(page, card, midway="console-reset-progress.png")
    ended = time.monotonic()
    assert seen[-1] == 100 and seen[0] == 0, seen
    moves = [p for p in seen if 0 < p < 100]
    assert len(moves) >= 3, f"the bar never showed the reset under way: {seen}"
    assert seen == sorted(seen), seen
    # The stream moved the bar: at the page's pace (every second) the polls would have
    # brought each move; at most one poll came, at the idle pace (every 5 s).
    during = [url for when, url in polls if began <= when <= ended]
    assert len(during) <= 1 + (ended - began) // 5, (during, ended - began)
    assert len(moves) > len(during) + 1, (seen, during)
    assert len(streams) == 1, streams  # one stream, never reopened
    # The stream's end asks for the page's panels at once: the history shows the reset done.
    card.locator("tr.reset-row.status-complete").wait_for(timeout=3_000)
    text = card.locator(".reset-progress").inner_text()
    assert "100%" in text and f"{RECORDS:,} / {RECORDS:,} snapshot records replayed" in text
    assert "records/s" in text
    assert card.locator("tr.reset-row.status-complete").count() == 1
    assert sum(slow_receiver.contents().values()) == RECORDS
    _screenshot(page, "console-reset-done.png")
    assert page.outside_requests == []


def test_a_bar_whose_stream_is_refused_polls_to_the_end(
    page, server, app: Flask, api: Api, auth_headers, slow_receiver, background_worker
):
    """No stream to be had (503 beyond the streams a process serves): the page polls instead."""
    app.extensions[events._SLOTS_KEY] = events._Slots(0)
    _http_pipeline(api, slow_receiver)
    polls = _requests_to(page, "/panels")
    streams = _requests_to(page, "/events")
    refused: list[int] = []
    page.on("response", lambda r: refused.append(r.status) if "/events" in r.url else None)
    _sign_in(page, server, _key(auth_headers))
    page.goto(f"{server}/console/pipelines/orders")
    card = page.locator('article[data-connector="sink1"]')
    card.get_by_role("button", name="Reset").click()
    card.locator(".reset-progress").wait_for()
    background_worker()
    began = time.monotonic()
    seen = _watch_to_the_end(page, card)
    ended = time.monotonic()
    assert seen[-1] == 100, seen
    assert len(streams) == 1 and refused == [503], (streams, refused)  # tried once, then polled
    during = [url for when, url in polls if began <= when <= ended]
    # Every second (the replay takes more than 2 s): at the idle pace there would be one.
    assert len(during) >= 2, (during, ended - began)
    card.locator("tr.reset-row.status-complete").wait_for(timeout=3_000)
    assert page.outside_requests == []


def test_a_page_follows_two_streams_at_most_and_polls_for_the_other_bars(
    page, server, api: Api, auth_headers
):
    """Each stream holds one of the browser's few connections: three resets, two streams."""
    api.create_pipeline("orders", views=("totals",))
    for name in ("a", "b", "c"):
        api.add_file_connector("orders", "totals", name, f"out/{name}.jsonl")
    api.action("orders", "start")
    for name in ("a", "b", "c"):
        api.reset(connector=name)
    polls = _requests_to(page, "/panels")
    streams = _requests_to(page, "/events")
    _sign_in(page, server, _key(auth_headers))
    page.goto(f"{server}/console/pipelines/orders")
    assert page.locator(".reset-progress[data-events]").count() == 3
    page.wait_for_timeout(3_000)
    assert len(streams) == 2, streams
    assert len(polls) >= 2, polls  # the third bar is polled, at the page's pace
    assert page.outside_requests == []


def test_the_cancel_button_cancels_a_queued_reset(
    page, server, running_pipeline: Api, auth_headers
):
    _sign_in(page, server, _key(auth_headers))
    page.goto(f"{server}/console/pipelines/orders")
    card = page.locator('article[data-connector="sink1"]')
    card.get_by_role("button", name="Reset").click()
    card.locator('.reset-progress[data-status="inprogress"]').wait_for()
    cancel = card.get_by_role("button", name="Cancel")
    assert cancel.count() == 1
    _screenshot(page, "console-reset-cancel.png")
    cancel.click()  # and accept the confirmation
    page.locator(".flash-success", has_text="Reset of connector 'sink1' cancelled").wait_for()
    progress = card.locator(".reset-progress")
    assert progress.get_attribute("data-status") == "cancelled"
    assert progress.get_attribute("data-events") is None
    assert card.get_by_role("button", name="Cancel").count() == 0
    assert card.locator("tr.reset-row.status-cancelled").count() == 1
    resets = running_pipeline.client.get(
        "/v0/pipelines/orders/views/totals/connectors/sink1/resets"
    ).get_json()
    assert [r["status"] for r in resets] == ["cancelled"]
    assert page.outside_requests == []


def _set_hidden(page: Any, hidden: bool) -> None:
    """Make the page's tab look hidden (in the background) or shown, as its scripts see it."""
    getter = "() => true" if hidden else "() => false"
    page.evaluate(
        f"Object.defineProperty(document, 'hidden', {{configurable: true, get: {getter}}})"
    )


def test_a_page_of_connectors_polls_once_for_all_its_panels(
    page, server, app: Flask, api: Api, auth_headers
):
    """60 connectors: 25 on a page, one poll for them (swapped in by id), none while hidden."""
    api.create_pipeline("big", views=("alpha",))
    for n in range(60):
        api.add_file_connector("big", "alpha", f"c{n:03d}", f"big/c{n:03d}.jsonl")
    api.action("big", "start")
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "/panels" in r.url else None)
    _sign_in(page, server, _key(auth_headers))
    page.get_by_role("link", name="big").click()
    page.locator("#pipeline-status", has_text="running").wait_for()
    assert page.locator("article.connector").count() == 25
    assert "Connectors 1 to 25 of 60 · page 1 of 3" in page.locator("nav.pager").first.inner_text()
    page.locator("nav.pager").first.get_by_role("link", name="Next →").click()
    page.locator(".pager .position", has_text="page 2 of 3").first.wait_for()
    cards = page.locator("article.connector")
    assert cards.count() == 25 and cards.first.get_attribute("data-connector") == "c025"
    # What a poll brings shows in its panel: an error that came in meanwhile.
    with app.app_context():
        db.session.execute(
            sa.update(Connector).where(Connector.name == "c030").values(last_error="sink gone")
        )
        db.session.commit()
        db.session.remove()
    polls.clear()
    card = page.locator('article[data-connector="c030"] [data-field="last_error"]')
    card.filter(has_text="sink gone").wait_for(timeout=8_000)
    assert set(polls) == {f"{server}/console/pipelines/big/panels?after=alpha.c024"}, polls
    # A hidden tab asks for nothing; shown again, it polls again.
    _set_hidden(page, True)
    polls.clear()
    page.wait_for_timeout(6_000)
    assert polls == []
    _set_hidden(page, False)
    page.wait_for_timeout(6_000)
    assert 1 <= len(polls) <= 2, polls  # every 5 s
    _screenshot(page, "console-connector-page.png")
    assert page.outside_requests == []


def test_a_read_key_has_no_reset_button(page, server, running_pipeline, read_headers):
    _sign_in(page, server, _key(read_headers))
    page.get_by_role("link", name="orders").click()
    card = page.locator('article[data-connector="sink1"]')
    card.wait_for()
    assert "in_sync" in card.inner_text()
    assert page.get_by_role("button", name="Reset").count() == 0
    for name in ("Start", "Stop", "Pause", "Resume", "Restart"):
        assert page.get_by_role("button", name=name).count() == 0, name
    assert page.locator("button").all_inner_texts() == ["Sign out"]
    _screenshot(page, "console-read-key.png")


def test_another_tenant_s_pipeline_is_not_reachable(
    page, server, running_pipeline, other_tenant_headers
):
    _sign_in(page, server, _key(other_tenant_headers))
    assert page.locator('tr[data-pipeline="orders"]').count() == 0
    assert "has no pipelines yet" in page.locator("main").inner_text()
    response = page.goto(f"{server}/console/pipelines/orders")
    assert response.status == 404
    assert "Unknown pipeline name 'orders'" in page.locator(".error-page").inner_text()
    response = page.goto(f"{server}/console/pipelines/orders/panels")
    assert response.status == 404
    _screenshot(page, "console-other-tenant.png")


class _AttackerPage(BaseHTTPRequestHandler):
    """A page of another site that submits a form to the console at once, without a token."""

    target = ""

    def do_GET(self) -> None:
        body = (
            "<!DOCTYPE html><html><body>"
            f'<form id="f" method="post" action="{self.target}">'
            '<input type="hidden" name="reason" value="gotcha"></form>'
            "<script>document.getElementById('f').submit()</script>"
            "</body></html>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def attacker(server: str) -> Iterator[int]:
    """Serve the attacker page on another port; return the port."""
    handler = type(
        "Handler", (_AttackerPage,), {"target": f"{server}/console/pipelines/orders/stop"}
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def _submit_from(page: Any, url: str) -> Any:
    """Open the attacker page and return the answer to the form it submits."""
    with page.expect_response(lambda r: r.url.endswith("/console/pipelines/orders/stop")) as sent:
        page.goto(url)
    return sent.value


def test_a_cross_site_post_without_the_csrf_token_is_refused(
    page, server, running_pipeline: Api, auth_headers, attacker
):
    _sign_in(page, server, _key(auth_headers))
    # Another port of the same host is the same site: the cookie goes along, the token does not.
    answer = _submit_from(page, f"http://127.0.0.1:{attacker}/")
    assert "console_session=" in (answer.request.all_headers().get("cookie") or "")
    assert answer.status == 400
    page.locator(".error-page").wait_for()
    assert "security token is missing" in page.locator(".error-page").inner_text()
    _screenshot(page, "console-csrf-refused.png")
    # Another site: SameSite=Strict keeps the cookie home, so there is no session at all: the
    # answer sends to sign-in, which, loaded again from the console, finds the session and
    # goes on to the pipelines (the session was never overwritten).
    answer = _submit_from(page, f"http://localhost:{attacker}/")
    assert "console_session=" not in (answer.request.all_headers().get("cookie") or "")
    assert answer.status == 303 and answer.headers["location"] == "/console/sign-in"
    page.locator("h1", has_text="Pipelines").wait_for()
    assert page.url == f"{server}/console/"
    # Nothing happened to the pipeline, and the operator is still signed in.
    assert running_pipeline.client.get("/v0/pipelines/orders").get_json()["status"] == "running"
    page.goto(f"{server}/console/pipelines/orders")
    assert page.locator("#pipeline-status").inner_text() == "running"
