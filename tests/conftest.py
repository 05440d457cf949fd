"""Shared fixtures: an app on a fresh database, its clients and helpers.

The database is a new SQLite file per test. With
``PIPELINE_MANAGER_TEST_DATABASE_URL`` set (``make test-postgres``), it is that
PostgreSQL database instead, emptied before each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, has_app_context
from flask.testing import FlaskClient

from app import create_app
from app.extensions import db
from app.resets.executor import ResetExecutor
from tests import openapi_check

# pytest-flask's live_server follows the app fixture's scope.
live_server_scope = "function"

TEST_DATABASE_URL = os.environ.get("PIPELINE_MANAGER_TEST_DATABASE_URL")


# For tests of SQLite's own behaviour (its file, its locks).
sqlite_only = pytest.mark.skipif(
    bool(TEST_DATABASE_URL), reason="tests SQLite itself; the suite runs on PostgreSQL"
)


def _empty_database(url: str) -> None:
    """Drop everything in a PostgreSQL database's public schema."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def app_config(tmp_path: Path) -> dict[str, Any]:
    """The test configuration; override it in a module to change a setting."""
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "SQLALCHEMY_DATABASE_URI": TEST_DATABASE_URL or f"sqlite:///{tmp_path / 'test.db'}",
        "SINK_DIR": str(tmp_path / "sinks"),
        "BACKGROUND_WORKER": False,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """An app on its own empty database, with the schema created."""
    if app_config["SQLALCHEMY_DATABASE_URI"] == TEST_DATABASE_URL:
        _empty_database(TEST_DATABASE_URL)
    app = create_app(app_config)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def make_key(app: Flask):
    """Create a real API key through the service; return its ``Authorization`` header.

    ``make_key(tenant="default", role="write", name=None)``.
    """
    from app.auth import service as auth_service

    count = 0

    def make(tenant: str = "default", role: str = "write", name: str | None = None) -> dict:
        nonlocal count
        count += 1
        with app.app_context():
            _, key = auth_service.create_key(tenant, name or f"test-{role}-{count}", role)
            db.session.remove()
        return {"Authorization": f"Bearer {key}"}

    return make


@pytest.fixture
def auth_headers(make_key) -> dict[str, str]:
    """Headers that authenticate as an admin of the default tenant (who may do anything)."""
    return make_key("default", "admin")


@pytest.fixture
def read_headers(make_key) -> dict[str, str]:
    """Headers that authenticate as a reader of the default tenant."""
    return make_key("default", "read")


@pytest.fixture
def other_tenant_headers(make_key) -> dict[str, str]:
    """Headers that authenticate as an admin of tenant "other"."""
    return make_key("other", "admin")


@pytest.fixture
def client(app: Flask, auth_headers: dict[str, str]) -> FlaskClient:
    """A test client that sends ``auth_headers`` with every request."""
    client = app.test_client()
    for name, value in auth_headers.items():
        client.environ_base["HTTP_" + name.upper().replace("-", "_")] = value
    return client


@pytest.fixture
def anon_client(app: Flask) -> FlaskClient:
    """A test client that sends no credentials."""
    return app.test_client()


@pytest.fixture
def run_resets(app: Flask):
    """Run the reset executor synchronously until no reset is left."""

    def run() -> int:
        with app.app_context():
            done = ResetExecutor(owner="test-worker").run_pending()
            db.session.remove()
        if has_app_context():
            # The test's own session (pytest-flask's request context) may hold
            # rows the executor just changed: read them afresh. (Each request
            # of the test client ends its own session: app.database.)
            db.session.expire_all()
        return done

    return run


class Api:
    """Small helpers over the test client for the common setup steps."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def create_pipeline(self, name: str = "orders", views: tuple[str, ...] = ("totals",)) -> dict:
        r = self.client.post("/v0/pipelines", json={"name": name, "views": list(views)})
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    def add_file_connector(
        self,
        pipeline: str = "orders",
        view: str = "totals",
        name: str = "sink1",
        path: str = "out/totals.jsonl",
    ) -> dict:
        r = self.client.post(
            f"/v0/pipelines/{pipeline}/views/{view}/connectors",
            json={"name": name, "transport": {"name": "file", "config": {"path": path}}},
        )
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    def action(self, pipeline: str, action: str) -> dict:
        r = self.client.post(f"/v0/pipelines/{pipeline}/{action}")
        assert r.status_code == 200, r.get_json()
        return r.get_json()

    def reset(
        self, pipeline: str = "orders", view: str = "totals", connector: str = "sink1"
    ) -> str:
        r = self.client.post(f"/v0/pipelines/{pipeline}/views/{view}/connectors/{connector}/reset")
        assert r.status_code == 202, r.get_json()
        return r.get_json()["token"]

    def status(self, token: str | None, pipeline: str = "orders"):
        query = {} if token is None else {"token": token}
        return self.client.get(f"/v0/pipelines/{pipeline}/reset_status", query_string=query)


@pytest.fixture
def api(client: FlaskClient) -> Api:
    """Setup helpers bound to the authenticated client."""
    return Api(client)


@pytest.fixture
def running_pipeline(api: Api) -> Api:
    """A running pipeline 'orders' with view 'totals' and file connector 'sink1'."""
    api.create_pipeline()
    api.add_file_connector()
    api.action("orders", "start")
    return api


@pytest.fixture
def receiver() -> Iterator[Any]:
    """A reference http receiver on loopback that applies what it is sent (tests/receiver.py)."""
    from tests.receiver import Receiver

    with Receiver() as r:
        yield r


@pytest.fixture
def driver() -> Iterator[Any]:
    """A fresh http transport driver (its own session and connection pool)."""
    from app.transports.http import HttpTransport

    d = HttpTransport()
    yield d
    d.close()


def assert_error(response: Any, status: int, error_code: str) -> dict:
    """Check an error response's status and body shape; return the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"message", "error_code", "details"}, body
    assert body["error_code"] == error_code, body
    assert isinstance(body["details"], dict) and isinstance(body["message"], str)
    return body


@pytest.fixture(autouse=True)
def answers_match_the_openapi_document(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check every answer a test client gets against the served OpenAPI document.

    A strict OAS 3.0 validator (tests/openapi_check.py): an undocumented
    status, a body off its schema (a null where the enum has none, a missing
    required field) fails the test that saw it.
    """
    sent = FlaskClient.open

    def open_and_check(self: FlaskClient, *args: Any, **kwargs: Any) -> Any:
        response = sent(self, *args, **kwargs)
        openapi_check.check(self.application, response)
        return response

    monkeypatch.setattr(FlaskClient, "open", open_and_check)
