"""Idempotency-Key: a retried request is answered once and stored once."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.idempotency import IdempotencyKey
from app.view_data.models import ViewRecord
from tests.conftest import assert_error

CHANGES = "/v0/pipelines/orders/views/totals/changes"
RESET = "/v0/pipelines/orders/views/totals/connectors/sink1/reset"
BATCH = [{"insert": {"id": 1, "total": 10}}, {"insert": {"id": 2, "total": 5}}]


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def view_state(client) -> tuple[int, list]:
    """The view's log end and contents, as an empty push and a snapshot show them."""
    r = client.post(CHANGES, json=[])
    assert r.status_code == 200, r.get_json()
    return r.get_json()["log_end"], _contents(client)


def _contents(client) -> list:
    with client.application.app_context():
        rows = db.session.execute(sa.select(ViewRecord.record, ViewRecord.weight))
        return sorted(tuple(row) for row in rows)


def test_same_key_same_body_answers_once_and_stores_once(client, running_pipeline):
    first = client.post(CHANGES, json=BATCH, headers=key("push-1"))
    assert first.status_code == 200
    state = view_state(client)
    again = client.post(CHANGES, json=BATCH, headers=key("push-1"))
    assert again.status_code == 200
    assert again.get_data() == first.get_data()  # the same bytes, not just the same JSON
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert view_state(client) == state


def test_same_key_other_body_answers_422(client, running_pipeline):
    assert client.post(CHANGES, json=BATCH, headers=key("push-1")).status_code == 200
    state = view_state(client)
    r = client.post(CHANGES, json=BATCH[:1], headers=key("push-1"))
    assert_error(r, 422, "IdempotencyKeyReused")
    assert view_state(client) == state


def test_same_key_on_another_route_answers_422(client, running_pipeline):
    client.post(CHANGES, json=BATCH, headers=key("k"))
    r = client.post("/v0/pipelines", json={"name": "other"}, headers=key("k"))
    assert_error(r, 422, "IdempotencyKeyReused")


def test_no_header_stores_every_push(client, running_pipeline):
    first = client.post(CHANGES, json=BATCH).get_json()
    second = client.post(CHANGES, json=BATCH).get_json()
    assert second["first_seq"] == first["last_seq"] + 1


def test_keys_are_per_tenant(app, client, running_pipeline, other_tenant_headers):
    other = app.test_client()
    headers = {**other_tenant_headers, **key("create")}
    mine = client.post("/v0/pipelines", json={"name": "p1"}, headers=key("create"))
    # The same key with another body is no reuse: it is the other tenant's key.
    theirs = other.post("/v0/pipelines", json={"name": "p2"}, headers=headers)
    assert mine.status_code == theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert client.get("/v0/pipelines/p2").status_code == 404
    assert other.get("/v0/pipelines/p2", headers=other_tenant_headers).status_code == 200


@pytest.mark.parametrize("bad", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_malformed_key_answers_400(client, running_pipeline, bad):
    environ = {"HTTP_IDEMPOTENCY_KEY": bad.encode("utf-8").decode("latin-1")}
    r = client.post(CHANGES, json=BATCH, environ_overrides=environ)
    body = assert_error(r, 400, "InvalidRequest")
    assert "Idempotency-Key" in body["details"]
    assert client.post(CHANGES, json=[]).get_json()["log_end"] == 0


def test_expired_key_runs_again(app, client, running_pipeline):
    first = client.post(CHANGES, json=BATCH, headers=key("old")).get_json()
    with app.app_context():
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        db.session.execute(sa.update(IdempotencyKey).values(created_at=long_ago))
        db.session.commit()
    second = client.post(CHANGES, json=BATCH, headers=key("old"))
    assert second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers
    assert second.get_json()["first_seq"] == first["last_seq"] + 1


def test_expired_keys_are_deleted_by_later_claims(app, client, running_pipeline):
    for n in range(3):
        client.post(CHANGES, json=[], headers=key(f"k{n}"))
    with app.app_context():
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        db.session.execute(sa.update(IdempotencyKey).values(created_at=long_ago))
        db.session.commit()
    client.post(CHANGES, json=[], headers=key("fresh"))
    with app.app_context():
        keys = db.session.execute(sa.select(IdempotencyKey.key)).scalars().all()
    assert keys == ["fresh"]


def test_concurrent_identical_requests_store_once(app, make_key, running_pipeline):
    headers = {**make_key("default", "write"), **key("race")}
    barrier = threading.Barrier(4)
    answers = []

    def push() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post(CHANGES, json=BATCH, headers=headers)
        answers.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=push) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) <= {200, 409} and statuses[0] == 200, answers
    assert len({str(body) for status, body in answers if status == 200}) == 1
    log_end, contents = view_state(running_pipeline.client)
    assert log_end == 2 and len(contents) == 2


def test_errors_below_500_are_replayed(client, running_pipeline):
    bad = [{"delete": {"id": 99}}]
    first = client.post(CHANGES, json=bad, headers=key("bad"))
    assert_error(first, 400, "InvalidRequest")
    again = client.post(CHANGES, json=bad, headers=key("bad"))
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"


def test_503_is_not_kept_so_the_retry_runs(client, api):
    api.create_pipeline()
    r = client.post(CHANGES, json=BATCH, headers=key("early"))
    assert_error(r, 503, "PipelineNotRunning")
    api.action("orders", "start")
    r = client.post(CHANGES, json=BATCH, headers=key("early"))
    assert r.status_code == 200 and r.get_json()["records"] == 2


def test_create_pipeline_is_idempotent(client):
    body = {"name": "orders", "views": ["totals"]}
    first = client.post("/v0/pipelines", json=body, headers=key("c1"))
    again = client.post("/v0/pipelines", json=body, headers=key("c1"))
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert len(client.get("/v0/pipelines").get_json()) == 1


def test_add_connector_is_idempotent(client, api):
    api.create_pipeline()
    url = "/v0/pipelines/orders/views/totals/connectors"
    body = {"name": "sink1", "transport": {"name": "file", "config": {"path": "out/t.jsonl"}}}
    first = client.post(url, json=body, headers=key("c2"))
    again = client.post(url, json=body, headers=key("c2"))
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"


def test_reset_is_idempotent(client, running_pipeline, run_resets):
    first = client.post(RESET, headers=key("r1"))
    assert first.status_code == 202
    run_resets()
    # The first reset ran: without the key this would queue a second one.
    again = client.post(RESET, headers=key("r1"))
    assert again.status_code == 202
    assert again.get_json()["token"] == first.get_json()["token"]
    assert again.headers["Location"] == first.headers["Location"]
    assert client.post(RESET).get_json()["token"] != first.get_json()["token"]


def test_create_api_key_is_idempotent(app, make_key):
    from app.auth.models import Role

    role = getattr(Role, "ADMIN", Role.WRITE)
    client = app.test_client()
    headers = {**make_key("default", role), **key("k1")}
    first = client.post("/v0/api_keys", json={"name": "ci", "role": "read"}, headers=headers)
    again = client.post("/v0/api_keys", json={"name": "ci", "role": "read"}, headers=headers)
    assert first.status_code == again.status_code == 201
    # The key itself is shown once and stored nowhere: the replay answers without it.
    shown = first.get_json()
    secret = shown.pop("key")
    assert again.get_json() == shown
    assert again.headers["Cache-Control"] == "no-store"
    with app.app_context():
        stored = db.session.execute(sa.select(IdempotencyKey.response_body)).scalars().all()
    assert not any(secret in body for body in stored)


# -- faults: a lost COMMIT reply, a database that is down ----------------------------------------


def _lose_the_commit_reply(app, monkeypatch) -> list[str]:
    """Make the next commit that stores view changes commit, then fail as a lost reply would.

    The work and its key's answer are committed by the database; the request
    sees the connection drop (a driver-level fault: what a network blip or a
    failover between the COMMIT and its reply does).
    """
    import psycopg

    with app.app_context():
        engine = db.engine
    dialect = engine.dialect
    real_commit = dialect.do_commit
    armed: list[str] = []

    def watch(conn, cursor, statement, *_args):
        if statement.lstrip().upper().startswith("INSERT INTO VIEW_CHANGES"):
            armed.append("armed")

    def commit_then_lose_the_reply(dbapi_connection):
        real_commit(dbapi_connection)
        if armed and armed[-1] == "armed":
            armed[-1] = "lost"
            if dialect.name == "postgresql":
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            import sqlite3

            raise sqlite3.OperationalError("database is locked")

    sa.event.listen(engine, "before_cursor_execute", watch)
    monkeypatch.setattr(dialect, "do_commit", commit_then_lose_the_reply)
    return armed


def test_a_push_whose_commit_reply_was_lost_is_stored_once(
    app, client, running_pipeline, monkeypatch
):
    """The COMMIT happened, its reply did not come: the request finds its committed answer
    instead of answering 503, and a retry with the key is a replay, not a second batch."""
    lost = _lose_the_commit_reply(app, monkeypatch)
    first = client.post(CHANGES, json=BATCH, headers=key("blip"))
    assert lost == ["lost"]
    assert first.status_code == 200, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    again = client.post(CHANGES, json=BATCH, headers=key("blip"))
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    log_end, contents = view_state(client)
    assert log_end == len(BATCH)  # one seq range: the batch was stored once
    assert [weight for _record, weight in contents] == [1, 1]


class _DatabaseDown:
    """While on, every statement fails as a database that is busy or unreachable."""

    def __init__(self, app) -> None:
        with app.app_context():
            self.engine = db.engine
        self.on = False
        sa.event.listen(self.engine, "before_cursor_execute", self._refuse)

    def _refuse(self, *_args):
        if self.on:
            raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    def close(self) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._refuse)


def test_a_release_the_database_refused_is_made_before_the_next_claim(
    app, client, running_pipeline, monkeypatch
):
    """The database fails during the push, and again while the key is released: the key
    stays pending. Once the database answers, the retry is not refused for a minute: the
    release is made first, and the retry runs."""
    from app.view_data import service

    down = _DatabaseDown(app)
    real_push = service.push_changes

    def push_while_the_database_goes_down(*args, **kwargs):
        down.on = True
        return real_push(*args, **kwargs)

    monkeypatch.setattr(service, "push_changes", push_while_the_database_goes_down)
    monkeypatch.setattr("app.idempotency.RELEASE_BACKOFF_SECONDS", 0.01)
    try:
        failed = client.post(CHANGES, json=BATCH, headers=key("k"))
        assert_error(failed, 503, "ServiceUnavailable")
        down.on = False
        with app.app_context():
            (state,) = db.session.execute(sa.select(IdempotencyKey.state)).scalars()
            db.session.remove()
        assert state == "pending"  # the release could not be made
        monkeypatch.setattr(service, "push_changes", real_push)
        retry = client.post(CHANGES, json=BATCH, headers=key("k"))
        assert retry.status_code == 200, retry.get_json()
        assert "Idempotent-Replayed" not in retry.headers
    finally:
        down.close()
    assert view_state(client)[0] == len(BATCH)


def test_a_key_in_progress_says_when_to_retry(app, client, running_pipeline):
    import hashlib

    body = b'[{"insert": {"id": 1}}]'
    digest = hashlib.sha256(f"POST {CHANGES}\n".encode() + body).hexdigest()
    with app.app_context():
        db.session.add(
            IdempotencyKey(
                tenant="default",
                key="busy",
                request_hash=digest,
                state="pending",
                owner="someone",
                created_at=dt.datetime.now(dt.UTC),
            )
        )
        db.session.commit()
        db.session.remove()
    r = client.post(CHANGES, data=body, headers={**key("busy"), "Content-Type": "application/json"})
    assert_error(r, 409, "IdempotencyKeyInProgress")
    assert r.headers["Retry-After"]


def test_a_big_error_answer_is_not_kept_for_a_day(app, client, running_pipeline):
    app.config["IDEMPOTENCY_MAX_ERROR_BYTES"] = 64
    bad = [{"insert": {"id": 1}}, {"upsert": {"id": 2, "padding": "x" * 200}}]
    first = client.post(CHANGES, json=bad, headers=key("big"))
    assert_error(first, 400, "InvalidRequest")
    with app.app_context():
        assert db.session.execute(sa.select(sa.func.count(IdempotencyKey.id))).scalar() == 0
        db.session.remove()
    again = client.post(CHANGES, json=bad, headers=key("big"))
    assert_error(again, 400, "InvalidRequest")
    assert "Idempotent-Replayed" not in again.headers


def test_a_tenant_holds_at_most_its_quota_of_keys(app, client, running_pipeline):
    app.config["IDEMPOTENCY_MAX_KEYS_PER_TENANT"] = 2
    for name in ("a", "b"):
        assert client.post(CHANGES, json=[], headers=key(name)).status_code == 200
    r = client.post(CHANGES, json=[], headers=key("c"))
    body = assert_error(r, 409, "QuotaExceeded")
    assert body["details"]["quota"] == "idempotency_keys"
    assert client.post(CHANGES, json=[], headers=key("a")).status_code == 200  # a replay
