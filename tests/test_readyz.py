"""``GET /readyz``: ready only with the database, the schema at head and a live worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app, worker
from tests.conftest import assert_error


def test_ready_with_the_schema_and_no_background_worker_to_wait_for(anon_client):
    r = anon_client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {
        "status": "ready",
        "checks": {"database": "ok", "schema": "ok", "worker": "off"},
    }
    assert r.headers["Cache-Control"] == "no-store"


def test_not_ready_without_the_schema(tmp_path: Path):
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "k",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'bare.db'}",
            "BACKGROUND_WORKER": False,
        }
    )
    r = app.test_client().get("/readyz")
    body = assert_error(r, 503, "ServiceUnavailable")
    assert "make migrate" in body["message"]
    assert body["details"]["checks"]["schema"] == "not_at_head"
    assert r.headers["Retry-After"].isdigit()
    assert app.test_client().get("/healthz").status_code == 200  # still alive


@pytest.mark.parametrize(
    ("age", "state", "words"),
    [(None, "starting", "has not started yet"), (95.0, "stale", "last came round 95 s ago")],
)
def test_not_ready_while_this_process_worker_is_not_coming_round(
    anon_client, monkeypatch, age, state, words
):
    monkeypatch.setattr(worker, "background_expected", lambda app: True)
    monkeypatch.setattr(worker, "heartbeat_age", lambda: age)
    body = assert_error(anon_client.get("/readyz"), 503, "ServiceUnavailable")
    assert body["details"]["checks"]["worker"] == state
    assert words in body["message"]
    monkeypatch.setattr(worker, "heartbeat_age", lambda: 1.0)
    assert anon_client.get("/readyz").get_json()["checks"]["worker"] == "ok"
