"""Log lines: LOG_FORMAT=json gives one JSON object per line with the request's context.

In process, a handler with the service's formatter and filter sees what a
request logs; under gunicorn, the error log (gunicorn's and the application's
lines) and the access log are read back from their files.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import requests
from flask import Flask

from app import create_app, logs
from tests import faults

log = logging.getLogger("app.test_logging")


def test_json_lines_carry_the_request_id_sent_or_made(app: Flask, make_key) -> None:
    """One JSON object per line: time, level, logger, message and the request's fields."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestContextFilter())

    def noisy(pipeline_name: str):
        log.warning("looking at %s", pipeline_name)
        return {"ok": True}

    def broken():
        raise RuntimeError("boom")

    app.add_url_rule("/v0/pipelines/<pipeline_name>/noisy", "noisy", noisy)
    app.add_url_rule("/broken", "broken", broken)
    logger = logging.getLogger("app")
    logger.addHandler(handler)
    try:
        client = app.test_client()
        # First: pytest-flask keeps one app context (and its g) around a test's requests.
        r = client.get("/broken", headers={"X-Request-Id": "req-500"})
        assert r.status_code == 500
        headers = {**make_key("acme", "read"), "X-Request-Id": "req-42"}
        assert client.get("/v0/pipelines/orders/noisy", headers=headers).status_code == 200
        r = client.get("/v0/pipelines/orders/noisy", headers=make_key("acme", "read"))
        made = r.headers["X-Request-Id"]
    finally:
        logger.removeHandler(handler)
    crash, sent, generated = (json.loads(line) for line in stream.getvalue().splitlines())

    assert sent["request_id"] == "req-42" and generated["request_id"] == made
    for line in (sent, generated):
        assert line["level"] == "WARNING" and line["logger"] == "app.test_logging"
        assert line["message"] == "looking at orders"
        assert line["tenant"] == "acme" and line["pipeline"] == "orders"
        assert line["route"] == "/v0/pipelines/<pipeline_name>/noisy"
        assert line["time"].endswith("Z")
    assert crash["request_id"] == "req-500" and crash["route"] == "/broken"
    assert crash["level"] == "ERROR" and "RuntimeError: boom" in crash["exception"]
    assert "tenant" not in crash  # no credentials, no tenant


def test_text_lines_name_the_request_after_the_message() -> None:
    record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.request_id, record.route = "abc", "/healthz"
    line = logs.TextFormatter().format(record)
    assert line.endswith("INFO app.x: hello you [request_id=abc route=/healthz]")


def test_an_unknown_log_format_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT must be one of text, json"):
        create_app({"TESTING": True, "SECRET_KEY": "k", "LOG_FORMAT": "yaml",
                    "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'x.db'}"})  # fmt: skip


@pytest.mark.slow
def test_gunicorn_writes_json_error_and_access_lines_with_the_request_id(tmp_path: Path) -> None:
    errors, access = tmp_path / "error.log", tmp_path / "access.log"
    settings = {"LOG_FORMAT": "json", "WORKER_POLL_INTERVAL": 0.1}
    args = ("--error-logfile", str(errors), "--access-logfile", str(access))
    with faults.served(tmp_path, settings, *args, workers=2) as (base, _env):
        r = requests.get(
            f"{base}/v0/pipelines/orders/reset_status?token=SECRET.value",
            headers={"X-Request-Id": "trace-7"},
            timeout=5,
        )
        assert r.status_code == 401 and r.headers["X-Request-Id"] == "trace-7"
        faults.wait_for(
            lambda: "trace-7" in (access.read_text() if access.exists() else ""),
            timeout=10,
            what="the access line",
        )
    access_lines = [json.loads(line) for line in access.read_text().splitlines()]
    error_lines = [json.loads(line) for line in errors.read_text().splitlines()]
    (line,) = [line for line in access_lines if line.get("request_id") == "trace-7"]
    assert line["logger"] == "gunicorn.access" and line["status"] == 401
    assert line["route"] == "/v0/pipelines/<pipeline_name>/reset_status"
    assert line["pipeline"] == "orders" and line["method"] == "GET"
    assert line["duration_ms"] >= 0 and "SECRET" not in json.dumps(line)
    assert line["path"] == "/v0/pipelines/orders/reset_status?token=***"
    loggers = {line["logger"] for line in error_lines}
    assert {"gunicorn.error", "app.worker"} <= loggers  # the application's lines too
    assert all({"time", "level", "logger", "message"} <= set(line) for line in error_lines)
