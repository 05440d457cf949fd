"""Real-browser tests: Swagger UI's "Try it out" and cross-origin fetch, in headless Chromium.

They drive Debian's ``chromium`` with Playwright (no browser download). Where
``/usr/bin/chromium`` is missing they skip, except under CI (``CI=true``),
where they fail: CI installs the browser. Screenshots are written to
``tests/artifacts/`` (``PIPELINE_MANAGER_TEST_ARTIFACTS`` names another folder).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.chromium import ARTIFACTS_DIR, TIMEOUT_MS, local_page
from tests.chromium import browser as browser

RESET_STATUS_PATH = "/v0/pipelines/{pipeline_name}/reset_status"
RESET_PATH = "/v0/pipelines/{pipeline_name}/views/{view_name}/connectors/{connector_name}/reset"

pytestmark = pytest.mark.browser

# The page another site would serve: it calls the API with fetch and a bearer key.
CALLER_PAGE = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Internal docs</title></head>
<body><script>
async function callApi(base, method, path, key, body) {
  const init = {method: method, headers: {"Authorization": "Bearer " + key}};
  if (body !== null) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    const r = await fetch(base + path, init);
    return {fetched: true, status: r.status, body: await r.json(),
            location: r.headers.get("Location"), requestId: r.headers.get("X-Request-Id")};
  } catch (e) {
    return {fetched: false, error: String(e)};
  }
}
</script></body></html>
"""


@pytest.fixture
def page(browser) -> Iterator[Any]:
    """A fresh browser page (own storage) where only localhost can be reached.

    Playwright answers CORS preflights itself while it intercepts requests,
    so the cross-origin tests use :func:`caller_page` instead.
    """
    context, page = local_page(browser)
    yield page
    context.close()


@pytest.fixture
def caller_page(browser) -> Iterator[Any]:
    """A fresh browser page without request interception, so preflights reach the server."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


class _CallerPage(BaseHTTPRequestHandler):
    """Serve the caller page at every path."""

    def do_GET(self) -> None:
        """Answer with the page."""
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(CALLER_PAGE)))
        self.end_headers()
        self.wfile.write(CALLER_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


def _serve_in_thread(server: Any) -> threading.Thread:
    """Run a server's loop in a daemon thread."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def caller_origins() -> Iterator[tuple[str, str]]:
    """Two pages on other localhost ports: (allowed origin, not allowed origin)."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _CallerPage) for _ in range(2)]
    for server in servers:
        _serve_in_thread(server)
    yield tuple(f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def app_config(app_config: dict[str, Any], caller_origins: tuple[str, str]) -> dict[str, Any]:
    """Allow the first caller page's origin only."""
    return {**app_config, "CORS_ORIGINS": [caller_origins[0]]}


class _Recorder:
    """WSGI middleware remembering each request's method, path and Origin."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.requests: list[tuple[str, str, str | None]] = []

    def __call__(self, environ: dict, start_response: Any) -> Any:
        """Record the request and pass it on."""
        self.requests.append(
            (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("HTTP_ORIGIN"))
        )
        return self.app(environ, start_response)


@pytest.fixture
def server(app: Flask) -> Iterator[tuple[str, _Recorder]]:
    """Serve the app on a localhost port: (base URL, request recorder)."""
    recorder = _Recorder(app)
    httpd = make_server("127.0.0.1", 0, recorder, threaded=True)
    _serve_in_thread(httpd)
    yield f"http://127.0.0.1:{httpd.server_port}", recorder
    httpd.shutdown()
    httpd.server_close()


def _credential(auth_headers: dict[str, str]) -> str:
    """The API key inside the ``Authorization`` header."""
    return auth_headers["Authorization"].removeprefix("Bearer ")


def _authorize(page: Any, credential: str) -> None:
    """Enter the bearer credential in Swagger UI's Authorize dialog."""
    page.locator("button.authorize").first.click()
    dialog = page.locator(".modal-ux")
    dialog.locator("input").first.fill(credential)
    dialog.locator(".auth-btn-wrapper button.authorize").click()
    dialog.locator("button.btn-done").click()


def _operation_block(page: Any, method: str, path: str) -> Any:
    """The expanded operation of the Swagger UI page."""
    block = page.locator(f".opblock-{method}").filter(has=page.locator(f'[data-path="{path}"]'))
    if block.locator(".opblock-body").count() == 0:
        block.locator(".opblock-summary").first.click()
    return block


def _reset_status_block(page: Any) -> Any:
    """The expanded reset_status operation of the Swagger UI page."""
    return _operation_block(page, "get", RESET_STATUS_PATH)


def _run(block: Any, parameters: dict[str, str]) -> tuple[int, dict]:
    """Fill the parameters, press Execute and read the answer shown in the page."""
    try_it = block.locator("button.try-out__btn")
    if try_it.count() and try_it.inner_text().strip() == "Try it out":
        try_it.click()
    for name, value in parameters.items():
        block.locator(f'tr[data-param-name="{name}"] input').fill(value)
    # A previous answer is cleared before the new one shows.
    clear = block.locator("button.btn-clear")
    if clear.count():
        clear.click()
    block.locator("button.execute").click()
    live = block.locator(".live-responses-table .response")
    live.wait_for()
    status = int(live.locator(".response-col_status").first.inner_text().strip())
    body = live.locator(".response-col_description pre").first.inner_text()
    return status, json.loads(body)


def _execute(block: Any, pipeline: str, token: str) -> tuple[int, dict]:
    """Run reset_status for a pipeline and a token."""
    return _run(block, {"pipeline_name": pipeline, "token": token})


def test_docs_try_it_out_reads_reset_status_with_an_api_key(
    page, server, running_pipeline, auth_headers
):
    base, _ = server
    token = running_pipeline.reset()
    sent: list[str | None] = []
    page.on(
        "request",
        lambda r: sent.append(r.headers.get("authorization")) if "/reset_status" in r.url else None,
    )

    page.goto(f"{base}/docs/")
    page.locator(".swagger-ui .info .title").wait_for()
    _authorize(page, _credential(auth_headers))
    block = _reset_status_block(page)

    status, body = _execute(block, "orders", token)
    assert status == 200, body
    assert body["pipeline_name"] == "orders" and body["connector_name"] == "sink1"
    assert body["status"] == "inprogress" and body["phase"] == "queued"
    assert sent[-1] == auth_headers["Authorization"]

    status, body = _execute(block, "orders", "garbage")
    assert status == 400, body
    assert body["error_code"] == "InvalidResetToken"
    assert set(body) == {"message", "error_code", "details"}

    # The authorization survives a reload: no second Authorize.
    page.reload()
    page.locator(".swagger-ui .info .title").wait_for()
    status, body = _execute(_reset_status_block(page), "orders", token)
    assert status == 200, body
    assert sent[-1] == auth_headers["Authorization"]
    # Kept for this tab only: in sessionStorage, never in localStorage.
    assert page.evaluate("window.localStorage.length") == 0
    assert page.evaluate("window.ui.authSelectors.authorized().size") == 1
    other_tab = page.context.new_page()
    try:
        other_tab.goto(f"{base}/docs/")
        other_tab.locator(".swagger-ui .info .title").wait_for()
        assert other_tab.evaluate("window.ui.authSelectors.authorized().size") == 0
    finally:
        other_tab.close()
    # Logout forgets it, across a reload too.
    page.locator("button.authorize").first.click()
    dialog = page.locator(".modal-ux")
    dialog.locator("button", has_text="Logout").click()
    dialog.locator("button.btn-done").click()
    page.reload()
    page.locator(".swagger-ui .info .title").wait_for()
    assert page.evaluate("window.ui.authSelectors.authorized().size") == 0

    assert page.outside_requests == []


def _screenshot_down_to(page: Any, top: Any, bottom: Any, name: str) -> Path:
    """Save ``ARTIFACTS_DIR/<name>.png``: the page from ``top``'s top to ``bottom``'s bottom."""
    first, last = top.bounding_box(), bottom.bounding_box()
    scroll_y = page.evaluate("window.scrollY")
    path = ARTIFACTS_DIR / f"{name}.png"
    page.screenshot(
        path=str(path),
        full_page=True,
        clip={
            "x": first["x"],
            "y": first["y"] + scroll_y,
            "width": first["width"],
            "height": last["y"] + last["height"] - first["y"],
        },
    )
    return path


def test_docs_issue_a_reset_then_check_its_status_with_try_it_out(
    page, server, running_pipeline, auth_headers
):
    """The reference as a reader meets it: the introduction, the sections, then a reset and
    its status, both with "Try it out", the token pasted from one answer into the other."""
    base, _ = server
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(f"{base}/docs/")
    page.locator(".swagger-ui .info .title").wait_for()
    # Only this service's document: no top bar to explore another one.
    assert page.locator(".topbar").count() == 0
    assert page.get_by_text("Explore", exact=True).count() == 0
    info = page.locator(".swagger-ui .info")
    assert info.locator("h2", has_text="Authorization").is_visible()
    assert "pipeline-manager api-keys create" in info.inner_text()
    sections = page.locator(".opblock-tag-section .opblock-tag").all_inner_texts()
    assert [s.split("\n")[0] for s in sections] == [
        "Pipelines",
        "Pipeline Lifecycle",
        "View Data",
        "Output Connectors",
        "API Keys",
        "Notifications",
        "Health",
    ]
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / "docs-introduction.png"))

    _authorize(page, _credential(auth_headers))
    reset = _operation_block(page, "post", RESET_PATH)
    assert reset.locator(".opblock-summary-description").inner_text() == "Reset Output Connector"
    status, issued = _run(
        reset, {"pipeline_name": "orders", "view_name": "totals", "connector_name": "sink1"}
    )
    assert status == 202, issued
    assert issued["connector_name"] == "sink1" and issued["phase"] == "queued"

    block = _reset_status_block(page)
    assert block.locator(".opblock-summary-description").inner_text() == "Check Reset Status"
    status, body = _execute(block, "orders", issued["token"])
    assert status == 200, body
    assert body["reset_id"] == issued["reset_id"]
    assert body["status"] == "inprogress" and body["phase"] == "queued"
    assert (body["pipeline_name"], body["view_name"], body["connector_name"]) == (
        "orders",
        "totals",
        "sink1",
    )
    # The 200 body as the page shows it, the documented answer's meaning beside it.
    assert block.get_by_text("Reset token status has been retrieved").count() >= 1
    _screenshot_down_to(page, block, block.locator(".live-responses-table"), "docs-reset-status")

    assert page.outside_requests == []


def _call(page: Any, base: str, method: str, path: str, key: str, body: Any = None) -> dict:
    """Run the caller page's fetch in the browser."""
    return page.evaluate(
        "([base, method, path, key, body]) => callApi(base, method, path, key, body)",
        [base, method, path, key, body],
    )


def test_page_of_an_allowed_origin_reads_answers_and_errors(
    caller_page, server, caller_origins, running_pipeline, auth_headers
):
    base, recorder = server
    allowed, _ = caller_origins
    key = _credential(auth_headers)
    caller_page.goto(f"{allowed}/")

    result = _call(caller_page, base, "GET", "/v0/pipelines/orders", key)
    assert result["fetched"], result
    assert result["status"] == 200 and result["body"]["name"] == "orders"
    assert result["requestId"]

    result = _call(caller_page, base, "GET", "/v0/pipelines/non-existent-pipeline", key)
    assert result["fetched"], result
    assert result["status"] == 404
    assert result["body"] == {
        "message": "Unknown pipeline name 'non-existent-pipeline'",
        "error_code": "UnknownPipelineName",
        "details": {"pipeline_name": "non-existent-pipeline"},
    }

    result = _call(caller_page, base, "POST", "/v0/pipelines", key, {"name": "from-browser"})
    assert result["fetched"], result
    assert result["status"] == 201 and result["location"] == "/v0/pipelines/from-browser"

    # The bearer header made the browser ask first.
    preflights = [r for r in recorder.requests if r[0] == "OPTIONS" and r[2] == allowed]
    assert ("OPTIONS", "/v0/pipelines/orders", allowed) in preflights
    assert ("OPTIONS", "/v0/pipelines", allowed) in preflights


def test_page_of_another_origin_is_blocked_by_the_browser(
    caller_page, server, caller_origins, running_pipeline, auth_headers
):
    base, recorder = server
    _, blocked = caller_origins
    caller_page.goto(f"{blocked}/")

    result = _call(caller_page, base, "GET", "/v0/pipelines/orders", _credential(auth_headers))
    assert not result["fetched"], result
    assert "Failed to fetch" in result["error"]
    # The preflight was refused, so the call itself never left the browser.
    assert ("OPTIONS", "/v0/pipelines/orders", blocked) in recorder.requests
    assert ("GET", "/v0/pipelines/orders", blocked) not in recorder.requests
