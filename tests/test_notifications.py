"""Notification endpoints, the outbox and its delivery: signed, retried, at least once, fair."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app.database import read_db_time
from app.delivery.worker import DeliveryWorker
from app.extensions import db
from app.notifications import delivery
from app.notifications.delivery import deliver_due, next_due
from app.notifications.models import (
    EventType,
    NotificationDelivery,
    NotificationEndpoint,
    NotificationEvent,
)
from app.notifications.service import emit
from app.transports.destinations import DEFAULT_DENIED
from app.worker import Dispatcher
from tests.conftest import assert_error
from tests.faults import kill, start_worker, time_passes, wait_for

ALL_EVENTS = list(EventType.SUBSCRIBABLE)
RESET_COMPLETED = EventType.RESET_COMPLETED


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Short timeouts and retries, so that failures and retries take a moment."""
    return {
        **app_config,
        # Long enough for a loaded machine; the deadline's own test sets a short one.
        "NOTIFICATION_TIMEOUT_SECONDS": 5.0,
        "NOTIFICATION_RETRY_BASE_SECONDS": 0.01,
        "NOTIFICATION_RETRY_MAX_SECONDS": 0.05,
    }


@pytest.fixture(autouse=True)
def _first_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no tenant served last (the turn is kept per process)."""
    monkeypatch.setattr(delivery, "_last_tenant", None)


class Hook:
    """A notification receiver on 127.0.0.1: records every request, answers from a script.

    ``answers`` are used up one per request: a status, or ``"hang"`` (take the
    request in and never answer, until :meth:`close`); then 200. ``delay``
    seconds pass before each answer.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.paths: list[str] = []
        self.answers: list[int | str] = []
        self.delay = 0.0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook._lock:
                    hook.requests.append((dict(self.headers), body))
                    hook.paths.append(self.path)
                    answer = hook.answers.pop(0) if hook.answers else 200
                if answer == "hang":
                    hook._closed.wait(30)
                    self.close_connection = True
                    return
                time.sleep(hook.delay)
                self.send_response(int(answer))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving; hanging requests end without an answer."""
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()

    def event_ids(self) -> list[str]:
        """The event_id of each request, in arrival order."""
        with self._lock:
            return [json.loads(body)["event_id"] for _, body in self.requests]


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def register(client, url: str, events: list[str] | None = None, **extra: Any) -> dict:
    """Register an endpoint through the API; return the 201 body (with its secret)."""
    r = client.post("/v0/notifications", json={"url": url, "events": events or ALL_EVENTS, **extra})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def emit_committed(app: Flask, tenant: str, event_type: str, payload: dict) -> None:
    """Emit an event in a transaction of its own, committed."""
    with app.app_context():
        emit(tenant, event_type, payload)
        db.session.commit()
        db.session.remove()


def deliver(app: Flask, limit: int = 100) -> int:
    """Run one deliver_due in an app context; return how many it attempted."""
    with app.app_context():
        try:
            return deliver_due(limit)
        finally:
            db.session.remove()


def deliveries_of(client, notification_id: str) -> list[dict]:
    r = client.get(f"/v0/notifications/{notification_id}/deliveries")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def wait_due(app: Flask, timeout: float = 5.0) -> None:
    """Sleep until some pending delivery is due (its retry time, by the database's clock)."""
    deadline = time.monotonic() + timeout
    while True:
        with app.app_context():
            due, now = next_due(), read_db_time()
            db.session.remove()
        if due is not None and due <= now:
            return
        assert time.monotonic() < deadline, "no delivery came due"
        time.sleep(0.01)


def rows(app: Flask, model) -> int:
    with app.app_context():
        count = db.session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one()
        db.session.remove()
    return count


# -- registering, reading, removing ------------------------------------------------------------


def test_registering_answers_the_secret_once_and_never_again(client):
    body = register(client, "https://hooks.example.com/in", [RESET_COMPLETED], name="on-call")
    assert body["secret"].startswith("whsec_") and len(body["secret"]) > 40
    assert body["events"] == [RESET_COMPLETED] and body["name"] == "on-call"
    uuid.UUID(body["id"])
    shown = client.get(f"/v0/notifications/{body['id']}").get_json()
    assert "secret" not in shown
    assert shown["deliveries"] == {"delivered": 0, "pending": 0, "dead": 0}
    assert shown["last_error"] is None
    listed = client.get("/v0/notifications").get_json()
    assert [e["id"] for e in listed] == [body["id"]] and "secret" not in listed[0]
    assert body["secret"] not in json.dumps(shown) + json.dumps(listed)


def test_registering_answers_201_with_location_and_no_store(client):
    r = client.post("/v0/notifications", json={"url": "http://h.example/x", "events": ALL_EVENTS})
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v0/notifications/{r.get_json()['id']}"
    assert r.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://h.example/x", "events": ALL_EVENTS}, "url"),
        ({"url": "http://", "events": ALL_EVENTS}, "url"),
        ({"url": "http://h.example:99999/", "events": ALL_EVENTS}, "url"),
        ({"url": "http://h.example/a b", "events": ALL_EVENTS}, "url"),
        ({"url": "http://user:pw@h.example/x", "events": ALL_EVENTS}, "url"),
        ({"url": "http://h.example/" + "x" * 2048, "events": ALL_EVENTS}, "url"),
        ({"events": ALL_EVENTS}, "url"),
        ({"url": "http://h.example/x", "events": []}, "events"),
        ({"url": "http://h.example/x", "events": ["reset.exploded"]}, "events"),
        ({"url": "http://h.example/x", "events": [RESET_COMPLETED, RESET_COMPLETED]}, "events"),
        ({"url": "http://h.example/x", "events": [EventType.TEST]}, "events"),
        ({"url": "http://h.example/x"}, "events"),
        ({"url": "http://h.example/x", "events": ALL_EVENTS, "name": "a b"}, "name"),
        ({"url": "http://h.example/x", "events": ALL_EVENTS, "secret": "mine"}, "secret"),
    ],
)
def test_registering_refuses_bad_input_with_the_error_body(client, body, field):
    error = assert_error(client.post("/v0/notifications", json=body), 400, "InvalidRequest")
    assert field in error["details"], error
    assert client.get("/v0/notifications").get_json() == []


def test_credentials_in_the_url_are_refused_saying_why(client):
    body = {"url": "https://me:secret@h.example/x", "events": ALL_EVENTS}
    error = assert_error(client.post("/v0/notifications", json=body), 400, "InvalidRequest")
    assert "Credentials" in error["details"]["url"][0]
    assert "secret" not in error["message"]


def test_secret_looking_query_values_are_redacted_when_shown(app, client, cli):
    body = register(client, "https://h.example/in?token=abc123&team=ops")
    assert body["url"] == "https://h.example/in?token=***&team=ops"
    assert client.get(f"/v0/notifications/{body['id']}").get_json()["url"] == body["url"]
    assert "abc123" not in cli("notifications", "list").stdout


def test_the_list_is_paged_oldest_first_with_a_link_header(client):
    ids = [register(client, f"http://h.example/{n}")["id"] for n in range(5)]
    r = client.get("/v0/notifications", query_string={"limit": 2})
    assert [e["id"] for e in r.get_json()] == ids[:2]
    seen = []
    url = "/v0/notifications?limit=2"
    while url:
        r = client.get(url)
        seen += [e["id"] for e in r.get_json()]
        link = r.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
    assert seen == ids
    gone = client.get("/v0/notifications", query_string={"after": str(uuid.uuid4())})
    assert gone.get_json() == []
    assert_error(client.get("/v0/notifications?limt=2"), 400, "InvalidRequest")


def test_removing_an_endpoint_removes_its_deliveries_and_their_events(app, client):
    kept = register(client, "http://h.example/kept")
    gone = register(client, "http://h.example/gone")
    emit_committed(app, "default", RESET_COMPLETED, {"n": 1})
    client.post(f"/v0/notifications/{gone['id']}/test")
    assert rows(app, NotificationDelivery) == 3 and rows(app, NotificationEvent) == 2
    assert client.delete(f"/v0/notifications/{gone['id']}").status_code == 204
    assert_error(client.get(f"/v0/notifications/{gone['id']}"), 404, "UnknownNotificationEndpoint")
    assert_error(
        client.delete(f"/v0/notifications/{gone['id']}"), 404, "UnknownNotificationEndpoint"
    )
    # The shared event stays for the endpoint still owed it; the test event goes.
    assert rows(app, NotificationDelivery) == 1 and rows(app, NotificationEvent) == 1
    assert [d["type"] for d in deliveries_of(client, kept["id"])] == [RESET_COMPLETED]


ITEM_ROUTES = [
    ("GET", "/v0/notifications/{id}"),
    ("DELETE", "/v0/notifications/{id}"),
    ("POST", "/v0/notifications/{id}/test"),
    ("GET", "/v0/notifications/{id}/deliveries"),
]


@pytest.mark.parametrize("role", ["read", "write"])
def test_only_an_admin_manages_endpoints(client, make_key, role):
    endpoint = register(client, "http://h.example/x")
    headers = make_key("default", role)
    calls = [("GET", "/v0/notifications"), ("POST", "/v0/notifications"), *ITEM_ROUTES]
    for method, path in calls:
        body = {"url": "http://h.example/y", "events": ALL_EVENTS}
        r = client.open(path.format(id=endpoint["id"]), method=method, json=body, headers=headers)
        error = assert_error(r, 403, "InsufficientPermissions")
        assert error["details"] == {"required_role": "admin", "role": role}
    assert len(client.get("/v0/notifications").get_json()) == 1


def test_without_credentials_every_route_answers_401(anon_client, client):
    endpoint = register(client, "http://h.example/x")
    for method, path in [("GET", "/v0/notifications"), *ITEM_ROUTES]:
        r = anon_client.open(path.format(id=endpoint["id"]), method=method)
        assert_error(r, 401, "AuthenticationFailed")


def test_another_tenant_s_endpoints_answer_404_as_unknown(client, other_tenant_headers):
    endpoint = register(client, "http://h.example/x")
    for method, path in ITEM_ROUTES:
        r = client.open(path.format(id=endpoint["id"]), method=method, headers=other_tenant_headers)
        error = assert_error(r, 404, "UnknownNotificationEndpoint")
        assert error["details"] == {"notification_id": endpoint["id"]}
    assert client.get("/v0/notifications", headers=other_tenant_headers).get_json() == []
    assert client.get(f"/v0/notifications/{endpoint['id']}").status_code == 200


@pytest.mark.parametrize("notification_id", ["nope", "0", str(uuid.uuid4()), "x" * 300])
def test_an_id_that_names_no_endpoint_is_unknown(client, notification_id):
    for method, path in ITEM_ROUTES:
        r = client.open(path.format(id=notification_id), method=method)
        assert_error(r, 404, "UnknownNotificationEndpoint")


def test_a_tenant_has_a_quota_of_endpoints(app, client):
    app.config["TENANT_MAX_NOTIFICATION_ENDPOINTS"] = 2
    register(client, "http://h.example/1")
    register(client, "http://h.example/2")
    r = client.post("/v0/notifications", json={"url": "http://h.example/3", "events": ALL_EVENTS})
    error = assert_error(r, 409, "QuotaExceeded")
    assert error["details"] == {"quota": "notification_endpoints", "limit": 2, "current": 2}


def test_a_retry_with_the_same_idempotency_key_registers_once_without_the_secret(client):
    body = {"url": "http://h.example/x", "events": ALL_EVENTS}
    headers = {"Idempotency-Key": "register-once"}
    first = client.post("/v0/notifications", json=body, headers=headers)
    again = client.post("/v0/notifications", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    replayed = again.get_json()
    assert "secret" not in replayed
    assert replayed == {k: v for k, v in first.get_json().items() if k != "secret"}
    assert len(client.get("/v0/notifications").get_json()) == 1


def test_a_retried_test_request_queues_one_test_event(client):
    endpoint = register(client, "http://h.example/x")
    headers = {"Idempotency-Key": "test-once"}
    first = client.post(f"/v0/notifications/{endpoint['id']}/test", headers=headers)
    again = client.post(f"/v0/notifications/{endpoint['id']}/test", headers=headers)
    assert first.get_json() == again.get_json()
    assert len(deliveries_of(client, endpoint["id"])) == 1


def test_test_queues_a_test_event_to_that_endpoint_alone(client):
    tested = register(client, "http://h.example/a", [RESET_COMPLETED])
    other = register(client, "http://h.example/b")
    r = client.post(f"/v0/notifications/{tested['id']}/test")
    assert r.status_code == 202
    assert r.headers["Location"] == f"/v0/notifications/{tested['id']}/deliveries"
    queued = r.get_json()
    assert queued["type"] == "notification.test" and queued["state"] == "pending"
    assert queued["attempts"] == 0 and queued["delivered_at"] is None
    assert deliveries_of(client, tested["id"]) == [queued]
    assert deliveries_of(client, other["id"]) == []
    shown = client.get(f"/v0/notifications/{tested['id']}").get_json()
    assert shown["deliveries"] == {"delivered": 0, "pending": 1, "dead": 0}


# -- the outbox ----------------------------------------------------------------------------------


def test_emit_writes_one_pending_delivery_per_subscribed_endpoint(app, client):
    wants = register(client, "http://h.example/a", [RESET_COMPLETED])
    also = register(client, "http://h.example/b", [RESET_COMPLETED, EventType.RESET_FAILED])
    ignores = register(client, "http://h.example/c", [EventType.CONNECTOR_FAILED])
    emit_committed(app, "default", RESET_COMPLETED, {"pipeline_name": "orders"})
    emit_committed(app, "acme", RESET_COMPLETED, {"pipeline_name": "orders"})
    for endpoint, count in ((wants, 1), (also, 1), (ignores, 0)):
        found = deliveries_of(client, endpoint["id"])
        assert [d["type"] for d in found] == [RESET_COMPLETED] * count
    event_ids = {deliveries_of(client, e["id"])[0]["event_id"] for e in (wants, also)}
    assert len(event_ids) == 1  # one event, owed to two endpoints
    assert rows(app, NotificationEvent) == 1  # acme has no endpoint: nothing written


def test_emit_in_a_transaction_that_rolls_back_leaves_nothing(app, client):
    register(client, "http://h.example/a")
    with app.app_context():
        emit("default", RESET_COMPLETED, {"pipeline_name": "orders"})
        emit("default", EventType.CONNECTOR_FAILED, {"connector_name": "sink1"})
        db.session.rollback()
        db.session.remove()
    assert rows(app, NotificationEvent) == 0
    assert rows(app, NotificationDelivery) == 0
    with app.app_context():
        assert next_due() is None
        db.session.remove()


def test_emit_commits_nothing_itself_and_writes_with_the_caller_s_work(app, client):
    register(client, "http://h.example/a")
    with app.app_context():
        emit("default", RESET_COMPLETED, {"at": time.time()})
        # Another connection sees nothing until the caller commits.
        with db.engine.connect() as conn:
            seen = conn.execute(sa.select(sa.func.count()).select_from(NotificationEvent))
            assert seen.scalar_one() == 0
        db.session.commit()
        db.session.remove()
    assert rows(app, NotificationEvent) == 1


def test_emit_refuses_an_unknown_event_type(app):
    with app.app_context(), pytest.raises(ValueError, match="unknown notification event"):
        emit("default", "reset.exploded", {})


def test_emit_writes_datetimes_and_uuids_as_text(app, client, hook):
    import datetime as dt

    register(client, hook.url)
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    reset_id = uuid.uuid4()
    emit_committed(app, "default", RESET_COMPLETED, {"completed_at": when, "reset_id": reset_id})
    assert deliver(app) == 1
    data = json.loads(hook.requests[0][1])["data"]
    assert data == {"completed_at": "2030-01-02T03:04:05+00:00", "reset_id": str(reset_id)}


# -- delivery ------------------------------------------------------------------------------------


def test_a_delivery_is_signed_with_the_endpoint_s_secret(app, client, hook):
    endpoint = register(client, hook.url)
    emit_committed(app, "default", RESET_COMPLETED, {"pipeline_name": "orders", "n": 1})
    assert deliver(app) == 1
    ((headers, body),) = hook.requests
    message = json.loads(body)
    assert set(message) == {"event_id", "type", "created_at", "tenant", "data"}
    assert message["type"] == RESET_COMPLETED and message["tenant"] == "default"
    assert message["data"] == {"pipeline_name": "orders", "n": 1}
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Pipeline-Manager-Event"] == RESET_COMPLETED
    assert headers["X-Pipeline-Manager-Event-Id"] == message["event_id"]
    assert headers["X-Pipeline-Manager-Attempt"] == "1"
    timestamp = headers["X-Pipeline-Manager-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    # What the docs tell a receiver to compute:
    expected = hmac.new(
        endpoint["secret"].encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(headers["X-Pipeline-Manager-Signature"], f"v1={expected}")
    # Another secret does not verify.
    forged = hmac.new(b"whsec_other", timestamp.encode() + b"." + body, hashlib.sha256)
    assert headers["X-Pipeline-Manager-Signature"] != f"v1={forged.hexdigest()}"
    (shown,) = deliveries_of(client, endpoint["id"])
    assert shown["state"] == "delivered" and shown["attempts"] == 1
    assert shown["event_id"] == message["event_id"] and shown["next_attempt_at"] is None
    assert shown["delivered_at"] is not None
    counts = client.get(f"/v0/notifications/{endpoint['id']}").get_json()["deliveries"]
    assert counts == {"delivered": 1, "pending": 0, "dead": 0}
    with app.app_context():
        assert next_due() is None
        db.session.remove()


def test_a_500_then_200_is_retried_and_delivered_with_the_same_event_id(app, client, hook):
    endpoint = register(client, hook.url)
    hook.answers = [500]
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    assert deliver(app) == 1
    (failed,) = deliveries_of(client, endpoint["id"])
    assert failed["state"] == "pending" and failed["attempts"] == 1
    assert "HTTP 500" in failed["last_error"]
    shown = client.get(f"/v0/notifications/{endpoint['id']}").get_json()
    assert "HTTP 500" in shown["last_error"] and shown["last_error_at"] is not None
    wait_due(app)
    assert deliver(app) == 1
    (done,) = deliveries_of(client, endpoint["id"])
    assert done["state"] == "delivered" and done["attempts"] == 2
    ids = hook.event_ids()
    assert len(ids) == 2 and ids[0] == ids[1] == done["event_id"]
    stamps = [h["X-Pipeline-Manager-Attempt"] for h, _ in hook.requests]
    assert stamps == ["1", "2"]
    assert deliver(app) == 0  # nothing more to send


def test_a_receiver_that_never_answers_is_cut_off_by_the_deadline_and_retried(app, client, hook):
    app.config["NOTIFICATION_TIMEOUT_SECONDS"] = 0.5
    endpoint = register(client, hook.url)
    hook.answers = ["hang"]
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    started = time.monotonic()
    assert deliver(app) == 1
    assert time.monotonic() - started < 3.0
    (cut,) = deliveries_of(client, endpoint["id"])
    assert cut["state"] == "pending"
    assert cut["last_error"].endswith("could not connect or got no answer")
    wait_due(app)
    assert deliver(app) == 1
    (done,) = deliveries_of(client, endpoint["id"])
    assert done["state"] == "delivered" and done["attempts"] == 2
    assert hook.event_ids() == [done["event_id"]] * 2


def test_a_failing_endpoint_ends_dead_after_the_retry_window(app, client, hook):
    app.config["NOTIFICATION_RETRY_HOURS"] = 0.4 / 3600  # 0.4 s
    endpoint = register(client, hook.url)
    hook.answers = [503] * 1000
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        deliver(app)
        (found,) = deliveries_of(client, endpoint["id"])
        if found["state"] != "pending":
            break
        time.sleep(0.02)
    assert found["state"] == "dead"
    assert found["attempts"] >= 2 and found["next_attempt_at"] is None
    assert "HTTP 503" in found["last_error"]
    shown = client.get(f"/v0/notifications/{endpoint['id']}").get_json()
    assert shown["deliveries"] == {"delivered": 0, "pending": 0, "dead": 1}
    assert "HTTP 503" in shown["last_error"]
    sent = len(hook.requests)
    assert deliver(app) == 0 and len(hook.requests) == sent  # dead stays dead, listed
    with app.app_context():
        assert next_due() is None
        db.session.remove()


def test_the_backoff_doubles_up_to_its_cap_with_jitter(app):
    app.config.update(NOTIFICATION_RETRY_BASE_SECONDS=1.0, NOTIFICATION_RETRY_MAX_SECONDS=8.0)
    with app.app_context():
        for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (500, 8.0)]:
            waits = [delivery._backoff(attempts) for _ in range(200)]
            assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempts, waits)
            # Jittered: failures at one moment do not all retry at the next.
            assert max(waits) - min(waits) > ceiling / 10, (attempts, waits)


def test_a_denied_network_is_refused_at_connect(app, client, hook):
    # The name passes registration; the address it resolves to is refused when connecting.
    app.config["HTTP_SINK_DENIED_NETWORKS"] = [*DEFAULT_DENIED, "127.0.0.0/8", "::1/128"]
    endpoint = register(client, f"http://localhost:{hook.port}/hook")
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    assert deliver(app) == 1
    (found,) = deliveries_of(client, endpoint["id"])
    assert found["state"] == "pending"
    assert "destination not allowed" in found["last_error"]
    assert hook.requests == []


def test_an_allowed_list_that_does_not_name_the_receiver_refuses_it(app, client, hook):
    app.config["HTTP_SINK_ALLOWED_NETWORKS"] = ["10.0.0.0/8"]
    endpoint = register(client, hook.url)
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    deliver(app)
    assert "destination not allowed" in deliveries_of(client, endpoint["id"])[0]["last_error"]
    assert hook.requests == []


def test_a_crash_between_the_post_and_its_record_sends_the_same_event_again(
    app, client, hook, monkeypatch
):
    endpoint = register(client, hook.url)
    client.post(f"/v0/notifications/{endpoint['id']}/test")

    def crash(_claimed):
        raise SystemExit("killed after the POST")

    with monkeypatch.context() as patch:
        patch.setattr(delivery, "_record_success", crash)
        with pytest.raises(SystemExit):
            deliver(app)
    assert len(hook.requests) == 1
    # The dead sender's claim holds the delivery: nobody sends it meanwhile.
    (held,) = deliveries_of(client, endpoint["id"])
    assert (held["state"], held["attempts"]) == ("pending", 1)
    assert deliver(app) == 0
    with app.app_context():
        assert next_due() > read_db_time()
        # Time passes: the claim runs out (timeout + WORKER_LEASE_SECONDS after it was taken).
        db.session.execute(
            sa.update(NotificationDelivery).values(next_attempt_at=NotificationDelivery.created_at)
        )
        db.session.commit()
        db.session.remove()
    assert deliver(app) == 1
    (done,) = deliveries_of(client, endpoint["id"])
    assert done["state"] == "delivered" and done["attempts"] == 2
    assert hook.event_ids() == [done["event_id"]] * 2


def test_two_deliver_due_calls_in_parallel_never_send_one_delivery_twice(
    app, client, hook, monkeypatch
):
    endpoints = [register(client, f"{hook.url}/{n}") for n in range(3)]
    for n in range(10):
        emit_committed(app, "default", RESET_COMPLETED, {"n": n})
    hook.delay = 0.01
    # Both calls find the same 30 due deliveries before either claims one: the worst case.
    found_due = delivery._in_turn
    both_looked = threading.Barrier(2)
    picks: list[list[tuple[int, int]]] = []

    def look_together(limit: int) -> list[tuple[int, int]]:
        picked = found_due(limit)
        picks.append(picked)
        both_looked.wait(30)
        return picked

    monkeypatch.setattr(delivery, "_in_turn", look_together)
    counts: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            counts.append(deliver(app))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(picks) == 2 and len(picks[0]) == 30 and sorted(picks[0]) == sorted(picks[1])
    # Each (event, endpoint) pair reached the receiver exactly once.
    sent = Counter(zip(hook.event_ids(), hook.paths, strict=True))
    assert len(sent) == 30 and set(sent.values()) == {1}
    assert sum(counts) == 30, counts
    for e in endpoints:
        found = deliveries_of(client, e["id"])
        assert [(d["state"], d["attempts"]) for d in found] == [("delivered", 1)] * 10


def test_tenants_are_served_in_turn(app, client, make_key, hook):
    busy = register(client, f"{hook.url}/busy")
    quiet_client = app.test_client()
    quiet_client.environ_base["HTTP_AUTHORIZATION"] = make_key("quiet", "admin")["Authorization"]
    register(quiet_client, f"{hook.url}/quiet")
    for n in range(8):
        emit_committed(app, "default", RESET_COMPLETED, {"n": n})
    for n in range(2):
        emit_committed(app, "quiet", RESET_COMPLETED, {"n": n})
    assert deliver(app, limit=4) == 4
    tenants = [json.loads(body)["tenant"] for _, body in hook.requests]
    # One each, then again: the quiet tenant does not wait behind the busy one's backlog.
    assert Counter(tenants) == {"default": 2, "quiet": 2}
    assert tenants[0] != tenants[1] and tenants[2] != tenants[3]
    # Each tenant's oldest first.
    sent = [json.loads(b) for _, b in hook.requests]
    assert [m["data"]["n"] for m in sent if m["tenant"] == "default"] == [0, 1]
    assert deliver(app) == 6
    assert len(deliveries_of(client, busy["id"])) == 8


def test_with_more_tenants_than_the_limit_each_gets_its_turn_over_the_calls(app, make_key, hook):
    for tenant in ("t1", "t2", "t3"):
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = make_key(tenant, "admin")["Authorization"]
        register(c, f"{hook.url}/{tenant}")
        for n in range(2):
            emit_committed(app, tenant, RESET_COMPLETED, {"n": n})
    served = []
    for _ in range(3):
        assert deliver(app, limit=1) == 1
        served.append(json.loads(hook.requests[-1][1])["tenant"])
    assert sorted(served) == ["t1", "t2", "t3"]


def test_a_failed_attempt_makes_that_endpoint_s_other_deliveries_wait(app, client, hook):
    app.config["NOTIFICATION_RETRY_BASE_SECONDS"] = 30.0
    app.config["NOTIFICATION_RETRY_MAX_SECONDS"] = 30.0
    failing = register(client, f"{hook.url}/failing", [RESET_COMPLETED])
    for n in range(5):
        emit_committed(app, "default", RESET_COMPLETED, {"n": n})
    hook.answers = [500]
    assert deliver(app) == 1  # one attempt for the endpoint, not five
    found = deliveries_of(client, failing["id"])
    assert [d["attempts"] for d in found] == [0, 0, 0, 0, 1]
    with app.app_context():
        assert next_due() > read_db_time()  # all of them wait for the backoff
        db.session.remove()
    assert deliver(app) == 0


def test_next_due_says_when_the_earliest_pending_delivery_is_due(app, client, hook):
    with app.app_context():
        assert next_due() is None
        db.session.remove()
    endpoint = register(client, hook.url)
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    (queued,) = deliveries_of(client, endpoint["id"])
    with app.app_context():
        assert next_due().isoformat() == queued["next_attempt_at"]
        db.session.remove()
    hook.answers = [500]
    deliver(app)
    (retrying,) = deliveries_of(client, endpoint["id"])
    with app.app_context():
        assert next_due().isoformat() == retrying["next_attempt_at"] > queued["next_attempt_at"]
        db.session.remove()


def test_a_delivery_whose_endpoint_was_removed_meanwhile_is_dropped(app, client, hook):
    endpoint = register(client, hook.url)
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    with app.app_context():
        # An endpoint gone between emit's read and its write (no foreign key: see the model).
        db.session.execute(sa.update(NotificationDelivery).values(endpoint_id=10_000))
        db.session.commit()
        db.session.remove()
    assert deliver(app) == 0
    assert hook.requests == [] and rows(app, NotificationDelivery) == 0


def test_deliver_due_commits_its_work_and_leaves_no_transaction_open(app, client, hook):
    endpoint = register(client, hook.url)
    client.post(f"/v0/notifications/{endpoint['id']}/test")
    with app.app_context():
        assert deliver_due() == 1
        assert not db.session().in_transaction()
        db.session.remove()
    with app.app_context():
        state = db.session.execute(sa.select(NotificationDelivery.state)).scalar_one()
        endpoint_row = db.session.execute(sa.select(NotificationEndpoint)).scalar_one()
        assert (state, endpoint_row.delivered_count) == ("delivered", 1)
        db.session.remove()


# -- events, from the state changes that cause them --------------------------------------------

PIPELINE = "/v0/pipelines/orders"
CONNECTORS = PIPELINE + "/views/totals/connectors"


def messages(hook: Hook) -> list[dict]:
    """The bodies the receiver got, decoded, in arrival order."""
    return [json.loads(body) for _, body in hook.requests]


def deliver_pending(app: Flask) -> None:
    """Run the delivery worker until no connector has work left."""
    with app.app_context():
        DeliveryWorker("test-deliverer").run_pending()
        db.session.remove()


def http_pipeline(client, url: str) -> None:
    """A running pipeline ``orders`` with one http connector ``hook`` (no transport retries)."""
    r = client.post("/v0/pipelines", json={"name": "orders", "views": ["totals"]})
    assert r.status_code == 201, r.get_json()
    transport = {"name": "http", "config": {"url": url, "max_retries": 0}}
    r = client.post(CONNECTORS, json={"name": "hook", "transport": transport})
    assert r.status_code == 201, r.get_json()
    assert client.post(PIPELINE + "/start").status_code == 200


def push(client, first: int, count: int) -> None:
    changes = [{"insert": {"id": i}} for i in range(first, first + count)]
    assert client.post(PIPELINE + "/views/totals/changes", json=changes).status_code == 200


def test_a_completed_reset_tells_its_endpoints_without_its_token(
    app, client, running_pipeline, run_resets, hook
):
    endpoint = register(client, hook.url, [RESET_COMPLETED, EventType.RESET_FAILED])
    token = running_pipeline.reset()
    assert rows(app, NotificationEvent) == 0  # queued is no event
    assert run_resets() == 1
    assert deliver(app) == 1
    (message,) = messages(hook)
    status = running_pipeline.status(token).get_json()
    assert message["type"] == RESET_COMPLETED and message["tenant"] == "default"
    data = message["data"]
    assert (data["pipeline_name"], data["view_name"], data["connector_name"]) == (
        "orders",
        "totals",
        "sink1",
    )
    assert data["reset_id"] == status["reset_id"]
    assert (data["status"], data["phase"], data["origin"]) == ("complete", "done", "request")
    assert data["completed_at"] == status["completed_at"] and data["reason"] is None
    assert data["sync_state"] == "in_sync" and data["transport"] == "file"
    assert token not in hook.requests[0][1].decode()
    assert "config" not in data and "path" not in json.dumps(data)
    (shown,) = deliveries_of(client, endpoint["id"])
    assert (shown["type"], shown["state"]) == (RESET_COMPLETED, "delivered")


def test_a_cancelled_reset_tells_its_endpoints_once(app, client, running_pipeline, hook):
    register(client, hook.url, [EventType.RESET_CANCELLED])
    token = running_pipeline.reset()
    cancel = f"{PIPELINE}/reset_cancel"
    assert client.post(cancel, query_string={"token": token}).status_code == 200
    # Refused the second time: no state change, no event.
    assert_error(client.post(cancel, query_string={"token": token}), 409, "ResetNotCancellable")
    assert rows(app, NotificationEvent) == 1
    assert deliver(app) == 1
    (message,) = messages(hook)
    assert message["type"] == EventType.RESET_CANCELLED
    assert message["data"]["status"] == "cancelled"
    assert message["data"]["reason"] == "Cancelled; the sink kept what it had"


def test_a_completion_rolled_back_tells_nothing_and_the_one_that_commits_tells_once(
    app, client, running_pipeline, run_resets, monkeypatch
):
    from app.transports import TransportError
    from app.transports.file import StagingFile

    register(client, "http://h.example/in", [RESET_COMPLETED])
    token = running_pipeline.reset()
    switch_in = StagingFile.switch_in

    def broken(self: StagingFile) -> None:
        raise TransportError("Cannot reset sink file: disk full")

    # The switch fails after the fenced write that completes the reset: it all rolls back.
    monkeypatch.setattr(StagingFile, "switch_in", broken)
    run_resets()
    assert running_pipeline.status(token).get_json()["status"] == "inprogress"
    assert rows(app, NotificationEvent) == 0 and rows(app, NotificationDelivery) == 0
    monkeypatch.setattr(StagingFile, "switch_in", switch_in)
    with app.app_context():
        time_passes()
        db.session.commit()
        db.session.remove()
    assert run_resets() == 1
    assert running_pipeline.status(token).get_json()["status"] == "complete"
    assert rows(app, NotificationEvent) == 1 and rows(app, NotificationDelivery) == 1


def test_a_sink_file_cut_short_tells_that_the_connector_is_out_of_sync(
    app, client, running_pipeline, hook
):
    register(client, hook.url, [EventType.CONNECTOR_OUT_OF_SYNC])
    push(client, 0, 5)
    deliver_pending(app)
    sink = Path(app.config["SINK_DIR"]) / "default" / "out" / "totals.jsonl"
    sink.write_bytes(sink.read_bytes()[:10])  # damaged outside the service
    push(client, 5, 1)
    deliver_pending(app)
    assert deliver(app) == 1
    (message,) = messages(hook)
    assert message["type"] == EventType.CONNECTOR_OUT_OF_SYNC
    data = message["data"]
    assert (data["connector_name"], data["sync_state"]) == ("sink1", "resetting")
    assert "shorter" in data["reason"] or "cut" in data["reason"], data["reason"]


def test_a_sink_that_refuses_a_batch_tells_that_the_connector_failed(app, client, hook, receiver):
    register(client, hook.url, [EventType.CONNECTOR_FAILED])
    http_pipeline(client, receiver.url)
    receiver.refuse(422)
    push(client, 0, 3)
    deliver_pending(app)
    assert deliver(app) == 1
    (message,) = messages(hook)
    assert message["type"] == EventType.CONNECTOR_FAILED
    data = message["data"]
    assert (data["connector_name"], data["sync_state"], data["transport"]) == (
        "hook",
        "failed",
        "http",
    )
    assert "HTTP 422" in data["reason"]


def test_a_reset_the_sink_refuses_tells_that_it_and_its_connector_failed(
    app, client, hook, receiver, run_resets
):
    register(client, hook.url, [EventType.RESET_FAILED, EventType.CONNECTOR_FAILED])
    http_pipeline(client, receiver.url)
    receiver.refuse(422)  # an http 4xx: the reset gives up at once
    r = client.post(CONNECTORS + "/hook/reset")
    assert r.status_code == 202, r.get_json()
    run_resets()
    assert deliver(app) == 2
    found = {m["type"]: m["data"] for m in messages(hook)}
    assert set(found) == {EventType.RESET_FAILED, EventType.CONNECTOR_FAILED}
    assert found[EventType.RESET_FAILED]["status"] == "failed"
    assert "HTTP 422" in found[EventType.RESET_FAILED]["reason"]
    assert "HTTP 422" in found[EventType.CONNECTOR_FAILED]["reason"]


# -- the worker ----------------------------------------------------------------------------------


def test_the_worker_is_woken_by_an_event_and_delivers_it(app, client, hook):
    app.config["WORKER_POLL_INTERVAL"] = 60.0  # only a wake-up can make it look in time
    endpoint = register(client, hook.url)
    stop = threading.Event()
    dispatcher = Dispatcher(app, stop, threads=2)
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # idle, asleep until woken
        started = time.monotonic()
        client.post(f"/v0/notifications/{endpoint['id']}/test")
        wait_for(lambda: hook.requests, timeout=10, what="the test event")
        took = time.monotonic() - started
        wait_for(
            lambda: deliveries_of(client, endpoint["id"])[0]["state"] == "delivered",
            timeout=10,
            what="the delivery to be recorded",
        )
    finally:
        stop.set()
        dispatcher.doorbell.ring()
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert took < 5, took


def test_a_worker_killed_between_the_change_and_its_delivery_leaves_the_event_to_the_next(
    app, app_config, client, running_pipeline, hook, tmp_path
):
    """SIGKILL a real worker after the reset it ran completed, its event's POST unanswered.

    The event was committed with the completion; the next worker sends it again
    once the dead one's claim runs out, with the same event_id, signed anew.
    """
    settings = {
        **{k: v for k, v in app_config.items() if k != "TESTING"},
        "WORKER_LEASE_SECONDS": 1,
        "WORKER_POLL_INTERVAL": 0.05,
        "NOTIFICATION_TIMEOUT_SECONDS": 2.0,
    }
    endpoint = register(client, hook.url, [RESET_COMPLETED])
    push(running_pipeline.client, 0, 20)
    hook.answers = ["hang"]  # the first POST is taken in and never answered
    first = start_worker(settings, tmp_path / "first.log")
    try:
        token = running_pipeline.reset()
        wait_for(lambda: hook.requests, timeout=30, what="the event's first POST")
        # The state change is committed; its event is owed, being sent.
        assert running_pipeline.status(token).get_json()["status"] == "complete"
        (owed,) = deliveries_of(client, endpoint["id"])
        assert (owed["state"], owed["attempts"]) == ("pending", 1)
    finally:
        kill(first)
    second = start_worker(settings, tmp_path / "second.log")
    try:
        wait_for(
            lambda: deliveries_of(client, endpoint["id"])[0]["state"] == "delivered",
            timeout=30,
            what="the next worker to deliver the event",
        )
    finally:
        kill(second)
    (done,) = deliveries_of(client, endpoint["id"])
    assert done["attempts"] == 2
    assert hook.event_ids() == [done["event_id"]] * 2
    for headers, body in hook.requests:
        stamp = headers["X-Pipeline-Manager-Timestamp"]
        expected = hmac.new(endpoint["secret"].encode(), stamp.encode() + b"." + body, "sha256")
        assert headers["X-Pipeline-Manager-Signature"] == f"v1={expected.hexdigest()}"
    message = json.loads(hook.requests[-1][1])
    assert message["type"] == RESET_COMPLETED
    assert message["data"]["reset_id"] == running_pipeline.status(token).get_json()["reset_id"]


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def cli(app: Flask):
    runner = app.test_cli_runner()

    def run(*args: str):
        return runner.invoke(args=list(args))

    return run


def test_the_command_line_mirrors_the_api(app, cli, client, hook):
    added = cli("notifications", "add", hook.url, "--event", RESET_COMPLETED, "--tenant", "acme")
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip()
    assert secret.startswith("whsec_") and "\n" not in secret
    notification_id = re.search(r"endpoint ([0-9a-f-]{36})", added.stderr)[1]
    listed = json.loads(cli("notifications", "list", "--tenant", "acme", "--json").stdout)
    assert [e["id"] for e in listed] == [notification_id]
    assert secret not in cli("notifications", "list", "--tenant", "acme").stdout
    assert cli("notifications", "list", "--json").stdout.strip() == "[]"  # the default tenant's
    tested = cli("notifications", "test", notification_id, "--tenant", "acme")
    assert tested.exit_code == 0, tested.output
    event_id = tested.stdout.strip()
    assert deliver(app) == 1
    assert hook.event_ids() == [event_id]
    shown = json.loads(
        cli("notifications", "show", notification_id, "--tenant", "acme", "--json").stdout
    )
    assert shown["deliveries"] == {"delivered": 1, "pending": 0, "dead": 0}
    assert "secret" not in shown
    text = cli("notifications", "show", notification_id, "--tenant", "acme").stdout
    assert "deliveries.delivered: 1" in text and secret not in text
    found = json.loads(
        cli("notifications", "deliveries", notification_id, "--tenant", "acme", "--json").stdout
    )
    assert [(d["event_id"], d["state"]) for d in found] == [(event_id, "delivered")]
    assert (
        "delivered"
        in cli("notifications", "deliveries", notification_id, "--tenant", "acme").stdout
    )
    wrong = cli("notifications", "show", notification_id)  # another tenant's: unknown
    assert wrong.exit_code == 1 and "(UnknownNotificationEndpoint)" in wrong.stderr
    removed = cli("notifications", "remove", notification_id, "--tenant", "acme")
    assert removed.exit_code == 0, removed.output
    gone = cli("notifications", "show", notification_id, "--tenant", "acme")
    assert gone.exit_code == 1 and "(UnknownNotificationEndpoint)" in gone.stderr


def test_the_command_line_refuses_bad_input_as_the_api_does(cli):
    bad = cli("notifications", "add", "ftp://h.example/x", "--event", RESET_COMPLETED)
    assert bad.exit_code == 1 and "(InvalidRequest)" in bad.stderr and "url" in bad.stderr
    twice = ("--event", RESET_COMPLETED) * 2
    again = cli("notifications", "add", "http://h.example/x", *twice)
    assert again.exit_code == 1 and "events" in again.stderr
    usage = cli("notifications", "add", "http://h.example/x", "--event", "reset.exploded")
    assert usage.exit_code == 2
    add_json = cli(
        "notifications", "add", "http://h.example/x", "--event", RESET_COMPLETED, "--json"
    )
    assert json.loads(add_json.stdout)["secret"].startswith("whsec_")
