"""The error body: every error, every route, the same three fields."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.extensions import db
from app.pipelines import service as pipeline_service
from tests.conftest import Api, assert_error


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """A small body limit, so the 413 test sends little."""
    return {**app_config, "MAX_CONTENT_LENGTH": 4096}


def test_unknown_route_is_404_not_found(client: FlaskClient) -> None:
    for path in ("/nope", "/v0/nope", "/v0/pipelines/orders/nope/deeper"):
        body = assert_error(client.get(path), 404, "NotFound")
        assert body["details"] == {"path": path}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("put", "/v0/pipelines", {"GET", "POST"}),
        ("delete", "/v0/pipelines", {"GET", "POST"}),
        ("get", "/v0/pipelines/orders/start", {"POST"}),
        ("post", "/v0/pipelines/orders/reset_status", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow_header(
    client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    r = getattr(client, method)(path)
    body = assert_error(r, 405, "MethodNotAllowed")
    allow = {m.strip() for m in r.headers["Allow"].split(",")}
    assert allowed <= allow
    assert method.upper() not in allow
    assert set(body["details"]["allowed_methods"]) == allow
    assert body["details"]["method"] == method.upper()


@pytest.mark.parametrize("payload", ["{bad", "", '{"name": "x"', "\xff"])
def test_invalid_json_is_400(api: Api, payload: str) -> None:
    r = api.client.post("/v0/pipelines", data=payload, content_type="application/json")
    body = assert_error(r, 400, "InvalidRequest")
    assert body["details"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_body_that_is_not_json_is_415(api: Api, content_type: str) -> None:
    r = api.client.post("/v0/pipelines", data='{"name": "orders"}', content_type=content_type)
    assert_error(r, 415, "UnsupportedMediaType")
    assert_error(api.client.get("/v0/pipelines/orders"), 404, "UnknownPipelineName")


def test_json_content_type_with_charset_is_accepted(api: Api) -> None:
    r = api.client.post(
        "/v0/pipelines",
        data='{"name": "orders"}',
        content_type="application/json; charset=utf-8",
    )
    assert r.status_code == 201, r.get_json()


def test_missing_body_is_400_naming_the_required_field(api: Api) -> None:
    body = assert_error(api.client.post("/v0/pipelines"), 400, "InvalidRequest")
    assert "name" in body["details"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "orders", "colour": "red"}, "colour"),
        ({"name": "orders", "views": ["a"], "extra": {}}, "extra"),
        ([{"name": "orders"}], "body"),
        ("orders", "body"),
    ],
    ids=["unknown-field", "unknown-nested", "array", "string"],
)
def test_unknown_fields_and_wrong_shapes_are_400(api: Api, body: Any, field: str) -> None:
    error = assert_error(api.client.post("/v0/pipelines", json=body), 400, "InvalidRequest")
    assert field in error["details"], error
    assert all(isinstance(messages, list) for messages in error["details"].values())


def test_validation_is_400_not_422_on_every_resource(api: Api) -> None:
    api.create_pipeline()
    for r in [
        api.client.patch("/v0/pipelines/orders", json={"description": 5}),
        api.client.post("/v0/pipelines/orders/views", json={"name": ""}),
        api.client.post("/v0/pipelines/orders/views/totals/connectors", json={"name": "x"}),
    ]:
        assert_error(r, 400, "InvalidRequest")


def test_oversized_body_is_413_payload_too_large(api: Api, app: Flask) -> None:
    r = api.client.post("/v0/pipelines", json={"name": "orders", "description": "x" * 5000})
    body = assert_error(r, 413, "PayloadTooLarge")
    assert body["details"] == {"max_content_length": app.config["MAX_CONTENT_LENGTH"]}
    assert_error(api.client.get("/v0/pipelines/orders"), 404, "UnknownPipelineName")


def test_forced_exception_is_500_without_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("password=hunter2 in /srv/secret/path.py")

    monkeypatch.setattr(pipeline_service, "list_pipelines", boom)
    with caplog.at_level(logging.ERROR):
        r = api.client.get("/v0/pipelines")
    body = assert_error(r, 500, "InternalError")
    text = r.get_data(as_text=True)
    for secret in ("hunter2", "/srv/secret", "ZeroDivisionError", "Traceback"):
        assert secret not in text
    assert body["details"] == {"request_id": r.headers["X-Request-Id"]}
    assert any(record.exc_info for record in caplog.records)


def test_500_rolls_back_what_the_request_left_in_the_session(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-done change of a failed request is not saved by a later commit."""
    api.create_pipeline()
    real_get = pipeline_service.get_pipeline

    def change_then_fail(tenant: str, name: str) -> Any:
        pipeline = real_get(tenant, name)
        pipeline.description = "half-done"
        db.session.flush()
        raise RuntimeError("bug")

    monkeypatch.setattr(pipeline_service, "get_pipeline", change_then_fail)
    assert_error(api.client.get("/v0/pipelines/orders"), 500, "InternalError")
    monkeypatch.setattr(pipeline_service, "get_pipeline", real_get)
    api.create_pipeline("another")  # commits the session
    assert api.client.get("/v0/pipelines/orders").get_json()["description"] == ""


def test_every_answer_carries_a_request_id(client: FlaskClient) -> None:
    first = client.get("/nope").headers["X-Request-Id"]
    second = client.get("/nope").headers["X-Request-Id"]
    assert first and second and first != second
    assert client.get("/nope", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == (
        "abc-123"
    )
    # A request id that could forge log lines is replaced.
    forged = client.get("/nope", headers={"X-Request-Id": "a\tb"}).headers["X-Request-Id"]
    assert forged != "a\tb"


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        ("database is locked", True),
        ("locking protocol", True),  # SQLITE_PROTOCOL, under WAL contention
        ("database or disk is full", True),
        ("no such table: pipelines", False),
    ],
)
def test_sqlite_errors_that_mean_retry_later_are_transient(message: str, transient: bool) -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from app.database import is_transient_error

    error = OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))
    assert is_transient_error(error) is transient
