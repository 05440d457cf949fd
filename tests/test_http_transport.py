"""The http transport, against real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from app.errors import InvalidRequest
from app.transports import TransportError, get_transport
from app.transports.http import HttpTransport, backoff_delay, parse_settings, safe_url

# Tiny backoff so that the retry tests take milliseconds.
FAST = {"max_retries": 3, "backoff": {"base": 0.01, "cap": 0.05}, "timeout": 2}


class Receiver:
    """A real HTTP/1.1 server (keep-alive) that records what it is sent and answers as told.

    ``answer(n)`` gives the answer to the n-th request (1-based) as
    ``(status, headers, delay_seconds)``; by default every request gets 200.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.client_ports: list[int] = []
        self.count = 0
        self.answer: Callable[[int], tuple[int, dict[str, str], float]] = lambda n: (200, {}, 0)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/in"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.count += 1
                    number = receiver.count
                    receiver.messages.append({"raw": body, "json": json.loads(body)})
                    receiver.headers.append(dict(self.headers))
                    receiver.client_ports.append(self.client_address[1])
                status, headers, delay = receiver.answer(number)
                if delay:
                    time.sleep(delay)
                text = b"secret-receiver-detail" if status >= 300 else b"ok"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies received, in order."""
        return [m["json"] for m in self.messages]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver that accepts everything."""
    with Receiver() as r:
        yield r


@pytest.fixture
def driver() -> Iterator[HttpTransport]:
    """A fresh driver (its own session and connection pool)."""
    d = HttpTransport()
    yield d
    d.close()


def connector(url: str, **settings: Any) -> SimpleNamespace:
    """A connector as the worker hands it to the driver, with validated settings."""
    config = HttpTransport().validate_config({"url": url, **FAST, **settings})
    view = SimpleNamespace(name="totals", pipeline=SimpleNamespace(name="orders"))
    return SimpleNamespace(name="hook", config=config, view=view)


def unused_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RECORDS = [{"insert": {"id": 1, "total": 10}}, {"delete": {"id": 2, "total": "é"}}]


# -- settings ------------------------------------------------------------------


def test_settings_get_defaults_and_keep_the_url():
    config = HttpTransport().validate_config({"url": "https://sink.example:8443/in"})
    assert config == {
        "url": "https://sink.example:8443/in",
        "timeout": {"connect": 5.0, "read": 10.0},
        "max_retries": 4,
        "backoff": {"base": 0.5, "cap": 10.0},
    }


def test_single_timeout_applies_to_connect_and_read():
    config = HttpTransport().validate_config({"url": "http://h/", "timeout": 3})
    assert config["timeout"] == {"connect": 3.0, "read": 3.0}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "transport.config.url"),
        ({"url": 5}, "transport.config.url"),
        ({"url": "ftp://h/x"}, "transport.config.url"),
        ({"url": "http:///nohost"}, "transport.config.url"),
        ({"url": "http://h:99999/"}, "transport.config.url"),
        ({"url": "http://h/a b"}, "transport.config.url"),
        ({"url": "http://h/", "timeout": 0}, "transport.config.timeout"),
        ({"url": "http://h/", "timeout": True}, "transport.config.timeout"),
        ({"url": "http://h/", "timeout": "5"}, "transport.config.timeout"),
        ({"url": "http://h/", "timeout": {"read": 301}}, "transport.config.timeout.read"),
        ({"url": "http://h/", "timeout": {"connect": -1}}, "transport.config.timeout.connect"),
        ({"url": "http://h/", "timeout": {"total": 1}}, "transport.config.timeout"),
        ({"url": "http://h/", "max_retries": -1}, "transport.config.max_retries"),
        ({"url": "http://h/", "max_retries": 2.5}, "transport.config.max_retries"),
        ({"url": "http://h/", "max_retries": 21}, "transport.config.max_retries"),
        ({"url": "http://h/", "backoff": 1}, "transport.config.backoff"),
        ({"url": "http://h/", "backoff": {"base": 0}}, "transport.config.backoff.base"),
        ({"url": "http://h/", "backoff": {"base": 2, "cap": 1}}, "transport.config.backoff.cap"),
        ({"url": "http://h/", "headers": {}}, "transport.config"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(config, field):
    with pytest.raises(InvalidRequest) as caught:
        HttpTransport().validate_config(config)
    assert field in caught.value.details, caught.value.details


def test_safe_url_drops_credentials_query_and_fragment():
    assert safe_url("https://user:pw@h.example:8443/in?key=s3cret#x") == "https://h.example:8443/in"


def test_backoff_grows_is_capped_and_honours_retry_after_up_to_the_cap():
    settings = parse_settings({"url": "http://h/", "backoff": {"base": 1, "cap": 4}})
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (9, 4)]:
        delay = backoff_delay(settings, attempt, None)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(settings, 1, 3) == 3
    assert backoff_delay(settings, 1, 3600) == 4


# -- delivery ------------------------------------------------------------------


def test_batch_is_posted_as_json_with_its_batch_id(driver, receiver):
    sent = driver.deliver(connector(receiver.url), RECORDS, "b-1")
    assert receiver.bodies == [
        {
            "type": "batch",
            "connector": "hook",
            "pipeline": "orders",
            "view": "totals",
            "batch_id": "b-1",
            "records": RECORDS,
        }
    ]
    headers = receiver.headers[0]
    assert headers["X-Batch-Id"] == "b-1"
    assert headers["Content-Type"] == "application/json"
    assert sent == len(receiver.messages[0]["raw"])


def test_batches_reuse_one_pooled_connection(driver, receiver):
    conn = connector(receiver.url)
    for number in range(5):
        driver.deliver(conn, RECORDS, f"b-{number}")
    assert [b["batch_id"] for b in receiver.bodies] == [f"b-{n}" for n in range(5)]
    assert len(set(receiver.client_ports)) == 1


def test_threads_can_share_the_driver(driver, receiver):
    conn = connector(receiver.url)
    errors: list[BaseException] = []

    def send(thread: int) -> None:
        try:
            for number in range(10):
                driver.deliver(conn, RECORDS, f"t{thread}-{number}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = sorted(b["batch_id"] for b in receiver.bodies)
    assert ids == sorted(f"t{t}-{n}" for t in range(8) for n in range(10))


def test_receiver_that_fails_then_recovers_gets_the_batch_with_the_same_id(driver, receiver):
    receiver.answer = lambda n: (503, {}, 0) if n <= 2 else (200, {}, 0)
    driver.deliver(connector(receiver.url), RECORDS, "b-7")
    assert receiver.count == 3  # two retries
    assert [b["batch_id"] for b in receiver.bodies] == ["b-7"] * 3
    assert {h["X-Batch-Id"] for h in receiver.headers} == {"b-7"}
    assert len({m["raw"] for m in receiver.messages}) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_answers_are_retried(driver, receiver, status):
    receiver.answer = lambda n: (status, {}, 0) if n == 1 else (200, {}, 0)
    driver.deliver(connector(receiver.url), RECORDS, "b-1")
    assert receiver.count == 2


def test_receiver_that_always_fails_gives_up_after_bounded_time_with_a_safe_message(driver):
    with Receiver() as receiver:
        receiver.answer = lambda n: (500, {}, 0)
        url = receiver.url.replace("http://", "http://user:hunter2@") + "?token=s3cret"
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            driver.deliver(connector(url, max_retries=2), RECORDS, "b-1")
        elapsed = time.monotonic() - started
    assert receiver.count == 3
    assert caught.value.attempts == 3
    assert elapsed < 2
    message = str(caught.value)
    assert "HTTP 500" in message and "3 attempts" in message
    for secret in ("hunter2", "user", "s3cret", "secret-receiver-detail"):
        assert secret not in message


def test_unreachable_receiver_is_retried_then_fails(driver):
    url = f"http://127.0.0.1:{unused_port()}/in"
    with pytest.raises(TransportError) as caught:
        driver.deliver(connector(url, max_retries=2), RECORDS, "b-1")
    assert caught.value.attempts == 3
    assert "connection failed" in str(caught.value)


def test_slow_receiver_times_out(driver, receiver):
    receiver.answer = lambda n: (200, {}, 1.5)
    conn = connector(receiver.url, timeout={"connect": 1, "read": 0.2}, max_retries=1)
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        driver.deliver(conn, RECORDS, "b-1")
    assert time.monotonic() - started < 1.2
    assert "read timeout" in str(caught.value)
    assert caught.value.attempts == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_client_errors_are_not_retried(driver, receiver, status):
    receiver.answer = lambda n: (status, {}, 0)
    with pytest.raises(TransportError) as caught:
        driver.deliver(connector(receiver.url), RECORDS, "b-1")
    assert receiver.count == 1
    assert caught.value.attempts == 1
    assert f"HTTP {status}" in str(caught.value)


def test_redirects_are_not_followed(driver, receiver):
    receiver.answer = lambda n: (307, {"Location": "http://127.0.0.1:1/elsewhere"}, 0)
    with pytest.raises(TransportError):
        driver.deliver(connector(receiver.url), RECORDS, "b-1")
    assert receiver.count == 1


def test_retry_after_is_honoured(driver, receiver):
    receiver.answer = lambda n: (429, {"Retry-After": "1"}, 0) if n == 1 else (200, {}, 0)
    started = time.monotonic()
    driver.deliver(connector(receiver.url, backoff={"base": 0.01, "cap": 5}), RECORDS, "b-1")
    elapsed = time.monotonic() - started
    assert receiver.count == 2
    assert 1 <= elapsed < 3


def test_retry_after_is_bounded_by_the_backoff_cap(driver, receiver):
    receiver.answer = lambda n: (503, {"Retry-After": "3600"}, 0) if n == 1 else (200, {}, 0)
    started = time.monotonic()
    driver.deliver(connector(receiver.url, backoff={"base": 0.01, "cap": 0.2}), RECORDS, "b-1")
    assert time.monotonic() - started < 1.5
    assert receiver.count == 2


def test_credentials_in_the_url_are_sent_as_basic_auth(driver, receiver):
    url = receiver.url.replace("http://", "http://user:pw@")
    driver.deliver(connector(url), RECORDS, "b-1")
    assert receiver.headers[0]["Authorization"].startswith("Basic ")


# -- reset ---------------------------------------------------------------------


def test_reset_message_names_the_connector_view_and_pipeline(driver, receiver):
    driver.reset(connector(receiver.url))
    assert receiver.bodies == [
        {"type": "reset", "connector": "hook", "pipeline": "orders", "view": "totals"}
    ]
    assert receiver.headers[0]["X-Message-Type"] == "reset"


def test_reset_of_an_http_connector_reaches_the_receiver(api, run_resets, receiver):
    api.create_pipeline()
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": {"url": receiver.url}}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    token = api.reset(connector="hook")
    assert run_resets() == 1
    assert api.status(token).get_json()["status"] == "complete"
    assert receiver.bodies[0] == {
        "type": "reset",
        "connector": "hook",
        "pipeline": "orders",
        "view": "totals",
    }


def test_reset_fails_with_a_safe_error_when_the_receiver_refuses(api, run_resets, receiver):
    receiver.answer = lambda n: (403, {}, 0)
    api.create_pipeline()
    url = receiver.url.replace("http://", "http://user:hunter2@")
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": {"url": url}}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    token = api.reset(connector="hook")
    run_resets()
    body = api.status(token).get_json()
    assert body["status"] == "failed"
    assert "HTTP 403" in body["error"] and "hunter2" not in body["error"]


def test_registry_serves_the_http_driver():
    assert isinstance(get_transport("http"), HttpTransport)


def test_retries_stop_within_half_the_worker_lease(app, driver, receiver):
    receiver.answer = lambda n: (503, {}, 0)
    app.config["WORKER_LEASE_SECONDS"] = 1
    conn = connector(receiver.url, max_retries=20, backoff={"base": 0.1, "cap": 0.1}, timeout=0.1)
    started = time.monotonic()
    with app.app_context(), pytest.raises(TransportError) as caught:
        driver.deliver(conn, RECORDS, "b-1")
    assert time.monotonic() - started < 0.8
    assert 2 <= caught.value.attempts < 21
