"""reset_status's event stream through a real gunicorn: a client that goes away, the cap, the end.

gunicorn runs with ``gunicorn.conf.py`` (gthread workers), one request worker,
no delivery process and no worker thread: a reset stays queued until the
test runs it (:func:`run_resets`, in this process, on the same database).
Each process streams ``EVENT_STREAMS_PER_PROCESS`` (here 1) at once, so a
slot that a gone client kept would refuse every later stream with 503.
tests/test_reset_events.py covers the stream itself, in process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from app import create_app
from app.extensions import db
from tests import conftest, faults
from tests.conftest import Api

STREAM = {"Accept": "text/event-stream"}
HEARTBEAT_SECONDS = 0.3


class Events:
    """A stream read as it comes: its blocks (an event, or a comment), one at a time."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self._chunks = response.iter_content(chunk_size=None)
        self._buffer = b""

    def next_block(self) -> str | None:
        """The next block (the text between two blank lines), or None at the stream's end."""
        while b"\n\n" not in self._buffer:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                return None
        block, self._buffer = self._buffer.split(b"\n\n", 1)
        return block.decode()

    def until(self, wanted: str, timeout: float = 10) -> list[str]:
        """Read blocks until one starts with ``wanted``; return all those read."""
        read: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            block = self.next_block()
            assert block is not None, f"the stream ended before {wanted!r}: {read}"
            read.append(block)
            if block.startswith(wanted):
                return read
        raise AssertionError(f"no {wanted!r} within {timeout}s: {read}")


def _data(block: str) -> dict[str, Any]:
    import json

    line = next(line for line in block.splitlines() if line.startswith("data: "))
    return json.loads(line.removeprefix("data: "))


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """An app on its own empty database, built by the migrations (as gunicorn's start expects)."""
    from flask_migrate import upgrade

    if app_config["SQLALCHEMY_DATABASE_URI"] == conftest.TEST_DATABASE_URL:
        conftest._empty_database(conftest.TEST_DATABASE_URL)
    app = create_app(app_config)
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def served(
    app: Flask, app_config: dict[str, Any], tmp_path: Path, running_pipeline: Api, auth_headers
) -> Iterator[tuple[str, dict[str, str], str]]:
    """gunicorn on the test's database, a reset queued: (status URL, headers, token)."""
    token = running_pipeline.reset()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    settings = {
        # The test's database, and its key: the token signed here is read there.
        "SQLALCHEMY_DATABASE_URI": app_config["SQLALCHEMY_DATABASE_URI"],
        "SECRET_KEY": app_config["SECRET_KEY"],
        "SINK_DIR": app_config["SINK_DIR"],
        "DELIVERY_PROCESSES": 0,
        "BACKGROUND_WORKER": False,
        "EVENT_STREAMS_PER_PROCESS": 1,
        "EVENT_STREAM_POLL_SECONDS": 0.1,
        "EVENT_STREAM_HEARTBEAT_SECONDS": HEARTBEAT_SECONDS,
    }
    with faults.served(tmp_path, settings, workers=1) as (base, _env):
        yield f"{base}/v0/pipelines/orders/reset_status", auth_headers, token


def _open(url: str, headers: dict[str, str], token: str) -> requests.Response:
    """Ask for the stream (on a connection of its own)."""
    return requests.get(
        url,
        params={"token": token},
        headers={**headers, **STREAM},
        stream=True,
        timeout=(5, 5),
    )


def test_a_client_that_goes_away_mid_stream_frees_its_slot(served) -> None:
    url, headers, token = served
    first = _open(url, headers, token)
    assert first.status_code == 200
    assert first.headers["Content-Type"].startswith("text/event-stream")
    events = Events(first)
    read = events.until("event: status")
    assert _data(read[-1])["status"] == "inprogress"
    assert _data(read[-1])["phase"] == "queued"
    events.until(": keep-alive", timeout=5 * HEARTBEAT_SECONDS)
    first.close()  # gone mid-stream: the reset is still queued

    gone = time.monotonic()
    while True:
        second = _open(url, headers, token)
        if second.status_code == 200:
            break
        assert second.status_code == 503, second.text
        second.close()
        assert time.monotonic() - gone < 5, "the gone client's slot was never given back"
        time.sleep(0.05)
    try:
        assert _data(Events(second).until("event: status")[-1])["phase"] == "queued"
    finally:
        second.close()


def test_beyond_the_cap_a_stream_is_refused_with_503_and_retry_after(served) -> None:
    url, headers, token = served
    first = _open(url, headers, token)
    try:
        assert first.status_code == 200
        Events(first).until("event: status")
        refused = _open(url, headers, token)
        assert refused.status_code == 503
        assert refused.headers["Content-Type"].startswith("application/json")
        assert int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["error_code"] == "ServiceUnavailable"
        assert body["details"]["max_streams"] == 1 and body["message"]
        # Plain polling still answers.
        plain = requests.get(url, params={"token": token}, headers=headers, timeout=5)
        assert plain.status_code == 200 and plain.json()["status"] == "inprogress"
    finally:
        first.close()


def test_a_stream_ends_after_the_final_status(served, run_resets) -> None:
    url, headers, token = served
    response = _open(url, headers, token)
    try:
        events = Events(response)
        assert _data(events.until("event: status")[-1])["phase"] == "queued"
        assert run_resets() == 1
        final = _data(events.until("event: status")[-1])
        while final["status"] == "inprogress":  # a phase on the way, polled meanwhile
            final = _data(events.until("event: status")[-1])
        assert (final["status"], final["phase"]) == ("complete", "done")
        began = time.monotonic()
        rest = []
        while (block := events.next_block()) is not None:
            rest.append(block)
        assert time.monotonic() - began < 3
        assert not any(b.startswith("event:") for b in rest), rest
        plain = requests.get(url, params={"token": token}, headers=headers, timeout=5).json()
        assert final == plain
    finally:
        response.close()
    # The slot is free again: a stream of the finished reset says its end at once.
    again = _open(url, headers, token)
    assert again.status_code == 200
    assert _data(Events(again).until("event: status")[-1])["status"] == "complete"
    again.close()
