"""GET /v0/pipelines/{pipeline_name}/reset_status: every row of the contract's table.

The 401/403 rows belong to the authentication tests.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import prepared
from app.extensions import db
from app.resets import service as reset_service
from app.resets.tokens import reset_tokens
from tests.conftest import Api, assert_error, sqlite_only

STATUS_FIELDS = {
    "status",
    "phase",
    "pipeline_name",
    "view_name",
    "connector_name",
    "incarnation",
    "snapshot_records",
    "replayed_records",
    "requested_at",
    "started_at",
    "completed_at",
    "error",
}


def forge(app: Flask, pipeline_id: str, incarnation: int, reset_id: uuid.UUID) -> str:
    """Sign a token with the app's own signer, for claims no real reset has."""
    with app.app_context():
        return reset_tokens().issue(uuid.UUID(pipeline_id), incarnation, reset_id)


def parse_time(value: str) -> dt.datetime:
    """Parse an ISO timestamp and check it carries a time zone."""
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


# -- 200 ----------------------------------------------------------------------


def test_queued_reset_answers_200_with_every_field(running_pipeline: Api) -> None:
    token = running_pipeline.reset()
    r = running_pipeline.status(token)
    assert r.status_code == 200, r.get_json()
    assert r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert set(body) >= STATUS_FIELDS
    assert body["status"] == "inprogress"
    assert body["phase"] == "queued"
    assert (body["pipeline_name"], body["view_name"], body["connector_name"]) == (
        "orders",
        "totals",
        "sink1",
    )
    assert body["incarnation"] == 1
    assert body["snapshot_records"] == 0 and body["replayed_records"] == 0
    parse_time(body["requested_at"])
    assert body["started_at"] is None and body["completed_at"] is None
    assert body["error"] is None


def test_completed_reset_answers_200_complete(running_pipeline: Api, run_resets) -> None:
    token = running_pipeline.reset()
    assert run_resets() == 1
    r = running_pipeline.status(token)
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert (body["status"], body["phase"], body["error"]) == ("complete", "done", None)
    requested = parse_time(body["requested_at"])
    started = parse_time(body["started_at"])
    completed = parse_time(body["completed_at"])
    assert requested <= started <= completed


def test_paused_pipeline_still_answers_200(running_pipeline: Api) -> None:
    token = running_pipeline.reset()
    running_pipeline.action("orders", "pause")
    r = running_pipeline.status(token)
    assert r.status_code == 200
    assert r.get_json()["incarnation"] == 1


# -- 400 InvalidResetToken: one test per details.reason -------------------------


@pytest.mark.parametrize("query", [{}, {"token": ""}], ids=["absent", "empty"])
def test_missing_token_is_400_missing(running_pipeline: Api, query: dict[str, str]) -> None:
    r = running_pipeline.client.get("/v0/pipelines/orders/reset_status", query_string=query)
    body = assert_error(r, 400, "InvalidResetToken")
    assert body["details"]["reason"] == "missing"


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        "a.b",
        "a b.c.d",
        "é.é.é",
        "x" * 513,
        "A" * 1_000_000,
    ],
    ids=["word", "two-parts", "space", "non-ascii", "just-too-long", "one-megabyte"],
)
def test_malformed_token_is_400_malformed(running_pipeline: Api, token: str) -> None:
    body = assert_error(running_pipeline.status(token), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2, 3],
        "text",
        None,
        {"p": "0" * 32, "i": 1},
        {"p": 123, "i": 1, "r": "0" * 32},
        {"p": "0" * 32, "i": 1, "r": {"x": 1}},
        {"p": "0" * 32, "i": "1", "r": "0" * 32},
        {"p": "0" * 32, "i": True, "r": "0" * 32},
        {"p": "zz", "i": 1, "r": "0" * 32},
    ],
    ids=[
        "list",
        "string",
        "null",
        "no-reset",
        "int-pipeline",
        "object-reset",
        "string-incarnation",
        "bool-incarnation",
        "bad-hex",
    ],
)
def test_signed_but_misshapen_payload_is_400_malformed(
    running_pipeline: Api, app: Flask, payload: Any
) -> None:
    """A payload that verifies but does not hold the claims is malformed, never a 500."""
    with app.app_context():
        token = reset_tokens()._serializer.dumps(payload)
    body = assert_error(running_pipeline.status(token), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "malformed"


def test_tampered_signature_is_400_bad_signature(running_pipeline: Api) -> None:
    token = running_pipeline.reset()
    head, _, signature = token.rpartition(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    body = assert_error(running_pipeline.status(f"{head}.{flipped}"), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "bad_signature"


def test_expired_token_is_400_expired(
    running_pipeline: Api, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = running_pipeline.reset()
    max_age = app.config["RESET_TOKEN_MAX_AGE"]
    later = int(dt.datetime.now(dt.UTC).timestamp()) + max_age + 5
    monkeypatch.setattr("itsdangerous.timed.TimestampSigner.get_timestamp", lambda self: later)
    body = assert_error(running_pipeline.status(token), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "expired"


def test_other_pipelines_token_is_400_wrong_pipeline(running_pipeline: Api) -> None:
    api = running_pipeline
    api.create_pipeline("billing", views=("totals",))
    api.add_file_connector("billing", path="billing.jsonl")
    api.action("billing", "start")
    billing_token = api.reset("billing")
    body = assert_error(api.status(billing_token, pipeline="orders"), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "wrong_pipeline"
    assert api.status(billing_token, pipeline="billing").status_code == 200


@pytest.mark.parametrize("incarnation", [0, 2, 10**12, -1])
def test_incarnation_the_pipeline_never_had_is_400_unknown_incarnation(
    running_pipeline: Api, app: Flask, incarnation: int
) -> None:
    pipeline = running_pipeline.client.get("/v0/pipelines/orders").get_json()
    token = forge(app, pipeline["id"], incarnation, uuid.uuid4())
    body = assert_error(running_pipeline.status(token), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "unknown_incarnation"
    assert body["details"]["current_incarnation"] == 1


def test_reset_the_pipeline_never_had_is_400_unknown_reset(
    running_pipeline: Api, app: Flask
) -> None:
    pipeline = running_pipeline.client.get("/v0/pipelines/orders").get_json()
    running_pipeline.reset()  # a real reset exists, but not the one the token names
    token = forge(app, pipeline["id"], 1, uuid.uuid4())
    body = assert_error(running_pipeline.status(token), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "unknown_reset"


# -- 404 ------------------------------------------------------------------------


def test_unknown_pipeline_is_404(running_pipeline: Api) -> None:
    token = running_pipeline.reset()
    body = assert_error(
        running_pipeline.status(token, pipeline="no-such-pipeline"), 404, "UnknownPipelineName"
    )
    assert body["details"] == {"pipeline_name": "no-such-pipeline"}
    assert body["message"] == "Unknown pipeline name 'no-such-pipeline'"


def test_unknown_pipeline_is_404_even_without_token(running_pipeline: Api) -> None:
    assert_error(running_pipeline.status(None, pipeline="nope"), 404, "UnknownPipelineName")


# -- 410 ------------------------------------------------------------------------


def test_restart_makes_old_tokens_gone_with_both_incarnations(running_pipeline: Api) -> None:
    api = running_pipeline
    token = api.reset()
    api.action("orders", "stop")
    api.action("orders", "start")
    body = assert_error(api.status(token), 410, "PipelineRestarted")
    assert body["details"]["token_incarnation"] == 1
    assert body["details"]["current_incarnation"] == 2
    assert body["details"]["pipeline_name"] == "orders"


def test_paused_new_incarnation_still_answers_410_for_old_tokens(running_pipeline: Api) -> None:
    api = running_pipeline
    token = api.reset()
    api.action("orders", "stop")
    api.action("orders", "start")
    api.action("orders", "pause")
    assert_error(api.status(token), 410, "PipelineRestarted")


# -- 500 ------------------------------------------------------------------------


def test_unexpected_exception_is_500_with_request_id_and_nothing_internal(
    running_pipeline: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = running_pipeline.reset()
    rollbacks: list[bool] = []
    real_rollback = db.session.rollback

    def spy_rollback() -> None:
        rollbacks.append(True)
        real_rollback()

    def boom(pipeline: Any, token: Any) -> None:
        raise RuntimeError("secret-internal-detail at /srv/app/db.sqlite")

    monkeypatch.setattr(reset_service, "reset_status", boom)
    monkeypatch.setattr(db.session, "rollback", spy_rollback)
    with caplog.at_level(logging.ERROR):
        r = running_pipeline.status(token)
    body = assert_error(r, 500, "InternalError")
    text = r.get_data(as_text=True)
    assert "secret-internal-detail" not in text and "RuntimeError" not in text
    assert "Traceback" not in text
    request_id = body["details"]["request_id"]
    assert request_id and request_id in body["message"]
    assert r.headers["X-Request-Id"] == request_id
    assert rollbacks, "the session was not rolled back"
    logged = [rec for rec in caplog.records if rec.exc_info and request_id in rec.getMessage()]
    assert logged, "the traceback was not logged with the request id"


def test_500_quotes_the_callers_request_id(
    running_pipeline: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(pipeline: Any, token: Any) -> None:
        raise KeyError("x")

    monkeypatch.setattr(reset_service, "reset_status", boom)
    r = running_pipeline.client.get(
        "/v0/pipelines/orders/reset_status",
        query_string={"token": "t"},
        headers={"X-Request-Id": "caller-id-42"},
    )
    body = assert_error(r, 500, "InternalError")
    assert body["details"]["request_id"] == "caller-id-42"


# -- 503 ------------------------------------------------------------------------


def test_stopped_pipeline_is_503_pipeline_not_running(running_pipeline: Api) -> None:
    token = running_pipeline.reset()
    running_pipeline.action("orders", "stop")
    body = assert_error(running_pipeline.status(token), 503, "PipelineNotRunning")
    assert body["details"]["pipeline_name"] == "orders"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Wait only briefly for a lock, so the busy-database test is quick."""
    return {**app_config, "SQLITE_BUSY_TIMEOUT_MS": 50}


@contextmanager
def exclusive_lock(app: Flask) -> Iterator[None]:
    """Hold an exclusive lock on the app's SQLite file from a second connection.

    In WAL mode readers pass a plain ``BEGIN EXCLUSIVE``; a connection in
    exclusive locking mode keeps every new connection out, reads included. The
    app's pooled connections are closed first so that its next request must
    open a new one.
    """
    db.session.remove()  # the test's app context holds a connection
    with app.app_context():
        db.engine.dispose()
    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, timeout=1)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        yield
        holder.execute("ROLLBACK")
    finally:
        holder.close()


@sqlite_only
def test_locked_database_is_503_service_unavailable_with_retry_after(
    running_pipeline: Api, app: Flask
) -> None:
    token = running_pipeline.reset()
    with exclusive_lock(app):
        started = time.monotonic()
        r = running_pipeline.status(token)
        waited = time.monotonic() - started
        body = assert_error(r, 503, "ServiceUnavailable")
        # SQLITE_BUSY_TIMEOUT_MS is honoured: 50 ms, not the 5 s default.
        assert waited < 2.5, waited
        assert r.headers["Retry-After"] == str(app.config["RETRY_AFTER_SECONDS"])
        assert body["details"]["retry_after_seconds"] == app.config["RETRY_AFTER_SECONDS"]
        assert "locked" not in r.get_data(as_text=True)
    # The lock is gone: the same request succeeds.
    assert running_pipeline.status(token).status_code == 200


# -- the hot path ---------------------------------------------------------------


def test_reset_status_runs_few_queries(running_pipeline: Api, app: Flask) -> None:
    """One statement: the pipeline joined to the reset."""
    token = running_pipeline.reset()
    assert running_pipeline.status(token).status_code == 200  # polling is the steady state
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    with app.app_context():
        db.session.remove()
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    # The hot reads run on the DB-API directly (app/prepared.py): count those too.
    prepared.statement_listeners.append(lambda statement, _params: statements.append(statement))
    try:
        r = running_pipeline.status(token)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
        prepared.statement_listeners.clear()
    assert r.status_code == 200, r.get_json()
    # One statement: the pipeline joined to the reset (plus the key's lookup
    # when the key's API_KEY_CACHE_SECONDS ran out since the first call).
    core = [statement for statement in statements if "api_keys" not in statement]
    assert len(core) == 1, statements
    assert len(statements) <= 2, statements


@pytest.mark.parametrize("then_start", [False, True], ids=["stopped", "restarted"])
def test_a_stop_by_another_process_is_seen_by_the_next_poll(
    app: Flask, running_pipeline: Api, then_start: bool
) -> None:
    """The pipeline and the reset are read in one statement: one moment of both."""
    from app import create_app

    token = running_pipeline.reset()
    assert running_pipeline.status(token).status_code == 200
    # Another process (its own app, engine and session) stops, maybe restarts, it now.
    other = create_app(dict(app.config)).test_client()
    other.environ_base.update(running_pipeline.client.environ_base)
    assert other.post("/v0/pipelines/orders/stop").status_code == 200
    if then_start:
        assert other.post("/v0/pipelines/orders/start").status_code == 200
        assert_error(running_pipeline.status(token), 410, "PipelineRestarted")
    else:
        assert_error(running_pipeline.status(token), 503, "PipelineNotRunning")


def test_an_abandoned_reset_is_never_served_as_200(app: Flask, running_pipeline: Api) -> None:
    """Even in a state no lifecycle path leaves (abandoned, yet its incarnation live)."""
    from app.resets.models import Reset, ResetStatus

    token = running_pipeline.reset()
    with app.app_context():
        db.session.execute(sa.update(Reset).values(status=ResetStatus.ABANDONED))
        db.session.commit()
        db.session.remove()
    assert_error(running_pipeline.status(token), 410, "PipelineRestarted")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"phase": "replaying_snapshot", "snapshot_records": 10, "replayed_records": 4},
        {"error": "the sink said 503", "attempts": 2, "origin": "redo"},
        {"status": "complete", "phase": "done", "snapshot_records": 3, "replayed_records": 3},
        {"status": "failed", "phase": "resetting_sink", "error": "gave up", "attempts": 5},
    ],
    ids=["queued", "replaying", "retrying", "complete", "failed"],
)
def test_the_hot_answer_is_what_the_schema_documents(
    app: Flask, running_pipeline: Api, values: dict[str, Any]
) -> None:
    """reset_status builds its answer by hand (the hot path): it must equal the schema's dump."""
    from app.database import utcnow
    from app.resets.models import Reset
    from app.resets.schemas import ResetStatusOut

    token = running_pipeline.reset()
    now = utcnow()
    if values:
        values = {**values, "started_at": now, "next_attempt_at": now + dt.timedelta(seconds=5)}
        if values.get("status") in ("complete", "failed"):
            values["completed_at"] = now + dt.timedelta(seconds=1)
    with app.app_context():
        if values:
            db.session.execute(sa.update(Reset).values(**values))
            db.session.commit()
        claims = reset_tokens().read(token)
        documented = ResetStatusOut().dump(db.session.get(Reset, claims.reset_id))
        db.session.remove()
    served = running_pipeline.status(token)
    assert served.status_code == 200, served.get_json()
    assert served.get_json() == documented
    assert served.headers["Cache-Control"] == "no-store"
    with app.app_context():
        assert reset_service.reset_status("default", "orders", token) == documented
