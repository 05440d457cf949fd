"""reset_status as Server-Sent Events (``Accept: text/event-stream``), in process.

The stream through a real gunicorn (a client that goes away, the cap) is in
tests/test_reset_events_served.py.
"""

from __future__ import annotations

import json
import threading
import time
import types
from typing import Any

import pytest
from flask import Flask

from app.extensions import db
from app.resets import events
from app.resets.executor import ResetExecutor
from tests.conftest import Api, assert_error

STREAM = {"Accept": "text/event-stream"}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Quick polls and short streams, so that a test sees a whole one."""
    return {
        **app_config,
        "EVENT_STREAM_POLL_SECONDS": 0.05,
        "EVENT_STREAM_HEARTBEAT_SECONDS": 0.2,
        "EVENT_STREAM_MAX_SECONDS": 2.0,
    }


def parse(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The stream's events (kind, id, data) and its comment lines."""
    found, comments = [], []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            fields["data"] = json.loads(fields["data"])
            found.append(fields)
    return found, comments


def stream(api: Api, token: str, **headers: str):
    return api.client.get(
        "/v0/pipelines/orders/reset_status",
        query_string={"token": token},
        headers={**STREAM, **headers},
    )


def test_a_finished_reset_streams_its_final_status_and_ends(
    running_pipeline: Api, run_resets: Any
) -> None:
    token = running_pipeline.reset()
    run_resets()
    r = stream(running_pipeline, token)
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-store"
    text = r.get_data(as_text=True)
    assert text.startswith("retry: ")
    found, _ = parse(text)
    assert [e["event"] for e in found] == ["status"]
    assert found[0]["data"] == running_pipeline.status(token).get_json()
    assert found[0]["id"] == events.event_id(found[0]["data"])


def test_the_stream_follows_the_reset_to_its_end(running_pipeline: Api, app: Flask) -> None:
    token = running_pipeline.reset()

    def run_later() -> None:
        time.sleep(0.3)
        with app.app_context():
            ResetExecutor(owner="test-worker").run_pending()
            db.session.remove()

    worker = threading.Thread(target=run_later)
    worker.start()
    r = stream(running_pipeline, token)
    worker.join()
    found, comments = parse(r.get_data(as_text=True))
    statuses = [(e["data"]["status"], e["data"]["phase"]) for e in found]
    assert statuses[0] == ("inprogress", "queued")
    assert statuses[-1] == ("complete", "done")
    assert len({e["id"] for e in found}) == len(found)  # each event a new state
    assert "keep-alive" in comments  # the quiet 0.3 s before the worker came


def test_last_event_id_resumes_without_repeating(running_pipeline: Api, run_resets: Any) -> None:
    token = running_pipeline.reset()
    run_resets()
    first, _ = parse(stream(running_pipeline, token).get_data(as_text=True))
    again, _ = parse(
        stream(running_pipeline, token, **{"Last-Event-ID": first[-1]["id"]}).get_data(as_text=True)
    )
    assert again == []  # the final state, seen already: nothing more to say


def test_a_stream_that_lasts_too_long_is_closed_for_the_client_to_reconnect(
    running_pipeline: Api, app: Flask
) -> None:
    app.config["EVENT_STREAM_MAX_SECONDS"] = 0.3
    token = running_pipeline.reset()
    text = stream(running_pipeline, token).get_data(as_text=True)
    found, comments = parse(text)
    assert [e["data"]["status"] for e in found] == ["inprogress"]
    assert any("reconnect" in c for c in comments)


def test_a_stream_ends_with_an_error_event_when_the_pipeline_stops(
    running_pipeline: Api, app: Flask, auth_headers: dict[str, str]
) -> None:
    token = running_pipeline.reset()

    stopped: list[int] = []

    def stop_later() -> None:
        time.sleep(0.2)
        client = app.test_client()
        stopped.append(client.post("/v0/pipelines/orders/stop", headers=auth_headers).status_code)

    stopper = threading.Thread(target=stop_later)
    stopper.start()
    found, _ = parse(stream(running_pipeline, token).get_data(as_text=True))
    stopper.join()
    assert stopped == [200]
    assert found[-1]["event"] == "error"
    assert found[-1]["data"]["error_code"] == "PipelineNotRunning"
    assert set(found[-1]["data"]) == {"message", "error_code", "details"}


def test_errors_before_the_stream_are_answered_as_json(running_pipeline: Api) -> None:
    r = stream(running_pipeline, "not-a-token")
    assert_error(r, 400, "InvalidResetToken")
    assert r.mimetype == "application/json"


def test_beyond_the_cap_a_stream_is_503_with_retry_after(running_pipeline: Api, app: Flask) -> None:
    token = running_pipeline.reset()
    slots = app.extensions[events._SLOTS_KEY]
    taken = 0
    while slots.take():
        taken += 1
    assert taken == app.config["EVENT_STREAMS_PER_PROCESS"]
    try:
        r = stream(running_pipeline, token)
        body = assert_error(r, 503, "ServiceUnavailable")
        assert r.headers["Retry-After"] == str(app.config["RETRY_AFTER_SECONDS"])
        assert body["details"]["max_streams"] == taken
        # Plain polling still answers.
        assert running_pipeline.status(token).status_code == 200
    finally:
        for _ in range(taken):
            slots.give()


def test_a_stream_gives_its_slot_back_at_its_end(running_pipeline: Api, app: Flask) -> None:
    app.config["EVENT_STREAM_MAX_SECONDS"] = 0.1
    token = running_pipeline.reset()
    for _ in range(app.config["EVENT_STREAMS_PER_PROCESS"] + 2):
        assert stream(running_pipeline, token).status_code == 200


def test_a_stream_holds_no_database_connection_while_it_waits(
    running_pipeline: Api, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.config["EVENT_STREAM_MAX_SECONDS"] = 0.4
    token = running_pipeline.reset()
    checked_out = []

    def sleep(seconds: float) -> None:
        checked_out.append(db.engine.pool.checkedout())
        time.sleep(seconds)

    monkeypatch.setattr(
        events, "time", types.SimpleNamespace(sleep=sleep, monotonic=time.monotonic)
    )
    assert stream(running_pipeline, token).status_code == 200
    assert checked_out and set(checked_out) == {0}


def test_json_stays_the_answer_for_other_accept_headers(running_pipeline: Api) -> None:
    token = running_pipeline.reset()
    for accept in ("*/*", "application/json", "application/json, text/event-stream;q=0.5"):
        r = running_pipeline.client.get(
            "/v0/pipelines/orders/reset_status",
            query_string={"token": token},
            headers={"Accept": accept},
        )
        assert r.mimetype == "application/json", accept
