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
