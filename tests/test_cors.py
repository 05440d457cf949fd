"""CORS: configured origins may call the API from a browser and read every answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.cors import allowed_origins
from tests.conftest import assert_error

ALLOWED = "http://docs.example.test:8080"
OTHER = "http://evil.example.test"
ENV_TEST_CONFIG = {"TESTING": True, "SECRET_KEY": "test-secret-key", "BACKGROUND_WORKER": False}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Allow one origin."""
    return {**app_config, "CORS_ORIGINS": [ALLOWED]}


def preflight(client, path: str, method: str = "GET", origin: str = ALLOWED, headers: str = ""):
    """Send the OPTIONS request a browser sends before a non-simple call."""
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers or "authorization",
        },
    )


def _header_set(value: str | None) -> set[str]:
    """Split a comma-separated header into lowercase names."""
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("", []),
        ([], []),
        ([ALLOWED], [ALLOWED]),
        (f'["{ALLOWED}", "{OTHER}/"]', [ALLOWED, OTHER]),
        (f"{ALLOWED}, {OTHER}", [ALLOWED, OTHER]),
        (ALLOWED, [ALLOWED]),
    ],
)
def test_origins_setting_accepts_list_json_or_commas(value, expected):
    assert allowed_origins(value) == expected


def test_origins_setting_refuses_broken_json():
    with pytest.raises(ValueError, match="JSON"):
        allowed_origins('["http://a.test"')


def test_origins_come_from_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PIPELINE_MANAGER_CORS_ORIGINS", f"{ALLOWED},{OTHER}")
    app = create_app(
        {**ENV_TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'env.db'}"}
    )
    assert app.config["CORS_ORIGINS"] == [ALLOWED, OTHER]
    monkeypatch.setenv("PIPELINE_MANAGER_CORS_ORIGINS", f'["{OTHER}"]')
    app = create_app(
        {**ENV_TEST_CONFIG, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'env.db'}"}
    )
    assert app.config["CORS_ORIGINS"] == [OTHER]


class TestNoOriginByDefault:
    """Without configuration, no origin is allowed."""

    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        """Drop the allowed origin."""
        return {k: v for k, v in app_config.items() if k != "CORS_ORIGINS"}

    def test_no_cors_headers(self, app: Flask, client):
        assert app.config["CORS_ORIGINS"] == []
        r = client.get("/v0/pipelines", headers={"Origin": ALLOWED})
        assert r.status_code == 200
        assert "Access-Control-Allow-Origin" not in r.headers
        r = preflight(client, "/v0/pipelines")
        assert "Access-Control-Allow-Origin" not in r.headers


def test_preflight_allows_bearer_and_json_without_credentials(anon_client):
    r = preflight(anon_client, "/v0/pipelines", "POST", headers="authorization,content-type")
    assert 200 <= r.status_code < 300, r.get_data(as_text=True)
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert {"authorization", "content-type"} <= _header_set(
        r.headers.get("Access-Control-Allow-Headers")
    )
    assert {"get", "post", "patch", "delete"} <= _header_set(
        r.headers.get("Access-Control-Allow-Methods")
    )
    assert "Access-Control-Allow-Credentials" not in r.headers
    assert int(r.headers["Access-Control-Max-Age"]) > 0


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v0/pipelines/orders", "DELETE"),
        ("/v0/pipelines/orders", "PATCH"),
        ("/v0/pipelines/orders/reset_status", "GET"),
        ("/v0/pipelines/orders/views/totals/connectors/sink1/reset", "POST"),
    ],
)
def test_preflight_answers_for_every_kind_of_route(anon_client, path, method):
    r = preflight(anon_client, path, method, headers="authorization,content-type")
    assert 200 <= r.status_code < 300, r.get_data(as_text=True)
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert method.lower() in _header_set(r.headers.get("Access-Control-Allow-Methods"))


def test_preflight_from_another_origin_is_not_allowed(anon_client):
    r = preflight(anon_client, "/v0/pipelines", "POST", origin=OTHER)
    assert "Access-Control-Allow-Origin" not in r.headers


def test_responses_expose_the_headers_callers_read(client):
    r = client.post(
        "/v0/pipelines", json={"name": "orders", "views": ["totals"]}, headers={"Origin": ALLOWED}
    )
    assert r.status_code == 201
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = _header_set(r.headers.get("Access-Control-Expose-Headers"))
    assert {"location", "retry-after", "x-request-id", "link"} <= exposed
    assert "Origin" in r.headers.get("Vary", "")


def test_not_found_error_carries_cors_headers(client):
    r = client.get("/v0/pipelines/non-existent-pipeline", headers={"Origin": ALLOWED})
    assert_error(r, 404, "UnknownPipelineName")
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_unknown_route_and_wrong_method_carry_cors_headers(client):
    r = client.get("/v0/no-such-thing", headers={"Origin": ALLOWED})
    assert_error(r, 404, "NotFound")
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    r = client.put("/v0/pipelines", headers={"Origin": ALLOWED})
    assert_error(r, 405, "MethodNotAllowed")
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_authentication_error_carries_cors_headers(anon_client):
    r = anon_client.get("/v0/pipelines", headers={"Origin": ALLOWED})
    assert_error(r, 401, "AuthenticationFailed")
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "www-authenticate" in _header_set(r.headers.get("Access-Control-Expose-Headers"))


def test_internal_error_carries_cors_headers(app: Flask, client, monkeypatch):
    from app.pipelines import service

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service, "list_pipelines", boom)
    r = client.get("/v0/pipelines", headers={"Origin": ALLOWED})
    body = assert_error(r, 500, "InternalError")
    assert "secret" not in r.get_data(as_text=True) and body["details"]["request_id"]
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_openapi_document_is_readable_cross_origin(anon_client):
    r = anon_client.get("/openapi.json", headers={"Origin": ALLOWED})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
