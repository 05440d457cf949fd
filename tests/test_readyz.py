"""``GET /readyz``: ready only with the database, the schema at head and a live worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app, worker
from tests.conftest import assert_error, sqlite_only


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


@sqlite_only
def test_a_full_disk_answers_503_and_makes_the_process_unready(
    app, client, running_pipeline, monkeypatch
):
    """SQLite's "database or disk is full" (a database held to its current size, as a full
    disk holds it) is the operator's to fix, not a bug: 503 with Retry-After, and /readyz
    says the database is full until writes go through for a while."""
    import sqlalchemy as sa

    from app import database
    from app.extensions import db

    def held_to_its_size(dbapi_connection, _record):
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    # The test's requests share one app context (pytest-flask's): give its connection
    # back, so that every request from here opens one the listener holds to size.
    db.session.remove()
    engine = db.engine
    engine.dispose()
    sa.event.listen(engine, "connect", held_to_its_size)
    try:
        big = [{"insert": {"id": i, "text": "x" * 500}} for i in range(2000)]
        r = client.post("/v0/pipelines/orders/views/totals/changes", json=big)
        body = assert_error(r, 503, "ServiceUnavailable")
        assert r.headers["Retry-After"].isdigit()
        assert "full" not in body["message"].lower() or "disk" in body["message"].lower()
        ready = assert_error(client.get("/readyz"), 503, "ServiceUnavailable")
        assert ready["details"]["checks"]["database"] == "full"
        assert "disk is full" in ready["message"]
        assert client.get("/healthz").status_code == 200  # alive: reads work
    finally:
        sa.event.remove(engine, "connect", held_to_its_size)
        db.session.remove()
        engine.dispose()
    monkeypatch.setattr(database, "FULL_SECONDS", 0.0)
    r = client.post("/v0/pipelines/orders/views/totals/changes", json=big[:10])
    assert r.status_code == 200
    assert client.get("/readyz").status_code == 200
