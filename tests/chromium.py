"""Headless Debian Chromium for the browser tests (test_browser.py, test_console_browser.py).

Playwright drives ``/usr/bin/chromium`` (no browser download). Where it is
missing the tests skip, except under CI (``CI=true``), where they fail: CI
installs the browser (.ci/run). Pages reach this machine only; anything else
they ask for is aborted and remembered in ``page.outside_requests``.
Screenshots go to ``ARTIFACTS_DIR``: ``tests/artifacts/`` (git-ignored), or the
folder ``PIPELINE_MANAGER_TEST_ARTIFACTS`` names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-gpu",
    # Nothing but this machine resolves, whatever a page asks for.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TIMEOUT_MS = 20_000
ARTIFACTS_DIR = Path(
    os.environ.get("PIPELINE_MANAGER_TEST_ARTIFACTS", Path(__file__).parent / "artifacts")
)


def browser_missing(reason: str) -> None:
    """Skip where the browser is missing, but fail under CI, which must have it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (one per test module)."""
    if not Path(CHROMIUM).exists():
        browser_missing(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_missing("playwright is not installed")
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()
    finally:
        playwright.stop()


def local_page(browser: Any, **context_options: Any) -> tuple[Any, Any]:
    """A page in a fresh context (its own storage) that reaches this machine only.

    Returns ``(context, page)``; ``page.outside_requests`` lists what it tried
    to fetch from elsewhere. Close the context when done.
    """
    context = browser.new_context(**context_options)
    context.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []

    def route(route: Any) -> None:
        """Let this machine through; abort (and remember) anything else."""
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.outside_requests = outside
    return context, page
