"""The http transport and its reference receiver, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask

from app.errors import InvalidRequest
from app.transports import TransportError, get_transport
from app.transports.http import (
    HttpTransport,
    answer_snippet,
    attempt_cap,
    backoff_delay,
    parse_settings,
    safe_url,
)
from app.transports.tables import SinkDiverged
from tests.faults import canonical

# Tiny backoff so that the retry tests take milliseconds.
FAST = {"max_retries": 3, "backoff": {"base": 0.01, "cap": 0.05}, "timeout": 2}

RECORDS = [{"insert": {"id": 1, "total": 10}}, {"insert": {"id": 2, "total": "é"}}]


def sink(url: str, uid: str | None = None, **settings: Any) -> SimpleNamespace:
    """A connector as the worker hands it to the driver (a ``SinkTarget``), validated settings."""
    config = HttpTransport().validate_config({"url": url, **{**FAST, **settings}})
    view = SimpleNamespace(name="totals", pipeline=SimpleNamespace(name="orders", tenant="default"))
    return SimpleNamespace(
        id=1,
        uid=uid or str(uuid.uuid4()),
        name="hook",
        transport="http",
        config=config,
        view_id=1,
        view=view,
    )


def batch(
    driver: HttpTransport,
    target: Any,
    first: int,
    last: int,
    records: list[dict] | None = None,
    *,
    epoch: int = 1,
    **kwargs: Any,
) -> int:
    """Send stream changes ``first``..``last`` (one record per seq unless given)."""
    if records is None:
        records = [{"insert": {"seq": s}} for s in range(first, last + 1)]
    return driver.send(
        target, records, kind="batch", epoch=epoch, first_seq=first, last_seq=last, **kwargs
    )


def snapshot(
    driver: HttpTransport, target: Any, first: int, records: list[dict], *, epoch: int, at: int
) -> int:
    """Send the snapshot records at positions ``first``.. of the snapshot taken at ``at``."""
    last = first + len(records) - 1
    return driver.send(
        target,
        records,
        kind="snapshot",
        epoch=epoch,
        first_seq=first,
        last_seq=last,
        snapshot_seq=at,
    )


@contextmanager
def lease(seconds: float) -> Iterator[None]:
    """An app context whose worker lease is ``seconds`` long."""
    app = Flask(__name__)
    app.config["WORKER_LEASE_SECONDS"] = seconds
    with app.app_context():
        yield


def unused_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multiset(*records: dict) -> Counter:
    return Counter(canonical(r) for r in records)


@contextmanager
def trickling_receiver(status: int, interval: float) -> Iterator[str]:
    """A server that answers a status line at once, then its body one byte per ``interval``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 100000\r\n\r\n".encode())
                while not stop.is_set():
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        break
                    time.sleep(interval)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/in"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


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


def test_attempt_cap_is_a_third_of_the_lease_in_an_app_and_none_outside():
    assert attempt_cap() is None
    with lease(0.9):
        assert attempt_cap() == pytest.approx(0.3)


def test_answer_snippet_is_one_line_of_at_most_200_characters():
    assert answer_snippet(b'{"error": "bad record"}\n') == '{"error": "bad record"}'
    assert answer_snippet(b"a\tb\r\nc\x1b[31md\x00e\xe2\x80\xaef") == "a b  c [31md e f"
    assert answer_snippet(b"\xff\xfeok") == "\ufffd\ufffdok"
    assert answer_snippet("é".encode() * 500) == "é" * 200


def test_registry_serves_the_http_driver():
    assert isinstance(get_transport("http"), HttpTransport)


# -- messages ------------------------------------------------------------------


def test_batch_message_carries_connector_id_epoch_and_seqs(driver, receiver):
    target = sink(receiver.url)
    sent = batch(driver, target, 5, 6, RECORDS, epoch=3)
    uid = target.uid
    assert receiver.messages == [
        {
            "type": "batch",
            "connector_id": uid,
            "connector": "hook",
            "pipeline": "orders",
            "view": "totals",
            "epoch": 3,
            "first_seq": 5,
            "last_seq": 6,
            "batch_id": f"{uid}:5-6",
            "records": RECORDS,
        }
    ]
    headers = receiver.headers[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Message-Type"] == "batch"
    assert headers["X-Connector-Id"] == uid
    assert headers["X-Epoch"] == "3"
    assert headers["X-Batch-Id"] == f"{uid}:5-6"
    assert sent == len(receiver.raw[0])
    assert receiver.raw[0].decode("utf-8").count("é") == 1  # UTF-8, not \u escapes


def test_snapshot_message_carries_its_positions_and_snapshot_seq(driver, receiver):
    target = sink(receiver.url)
    driver.reset(target, epoch=2, snapshot_seq=40)
    sent = snapshot(driver, target, 1, RECORDS, epoch=2, at=40)
    uid = target.uid
    assert receiver.messages[1] == {
        "type": "snapshot",
        "connector_id": uid,
        "connector": "hook",
        "pipeline": "orders",
        "view": "totals",
        "epoch": 2,
        "snapshot_seq": 40,
        "first_seq": 1,
        "last_seq": 2,
        "batch_id": f"{uid}:snapshot-2:1-2",
        "records": RECORDS,
    }
    headers = receiver.headers[1]
    assert headers["X-Message-Type"] == "snapshot"
    assert headers["X-Connector-Id"] == uid
    assert headers["X-Epoch"] == "2"
    assert headers["X-Batch-Id"] == f"{uid}:snapshot-2:1-2"
    assert sent == len(receiver.raw[1])
    assert receiver.violations == []


def test_reset_message_names_the_snapshot_seq(driver, receiver):
    target = sink(receiver.url)
    sent = driver.reset(target, epoch=4, snapshot_seq=17)
    assert receiver.messages == [
        {
            "type": "reset",
            "connector_id": target.uid,
            "connector": "hook",
            "pipeline": "orders",
            "view": "totals",
            "epoch": 4,
            "snapshot_seq": 17,
        }
    ]
    headers = receiver.headers[0]
    assert headers["X-Message-Type"] == "reset"
    assert headers["X-Connector-Id"] == target.uid
    assert headers["X-Epoch"] == "4"
    assert "X-Batch-Id" not in headers
    assert sent == len(receiver.raw[0])


def test_a_range_resent_by_a_later_epoch_keeps_its_seqs_and_batch_id(driver, receiver):
    target = sink(receiver.url)
    batch(driver, target, 1, 2, epoch=1)
    batch(driver, target, 1, 2, epoch=2)
    first, again = receiver.messages
    assert (again["first_seq"], again["last_seq"]) == (first["first_seq"], first["last_seq"])
    assert again["batch_id"] == first["batch_id"] == f"{target.uid}:1-2"
    assert receiver.headers[1]["X-Batch-Id"] == receiver.headers[0]["X-Batch-Id"]
    assert receiver.outcomes == ["applied", "repeat"]


def test_a_snapshot_batch_id_names_the_epoch_of_its_reset(driver, receiver):
    target = sink(receiver.url)
    driver.reset(target, epoch=1, snapshot_seq=0)
    snapshot(driver, target, 1, RECORDS, epoch=1, at=0)
    snapshot(driver, target, 1, RECORDS, epoch=2, at=0)
    ids = [m["batch_id"] for m in receiver.messages[1:]]
    assert ids == [f"{target.uid}:snapshot-1:1-2", f"{target.uid}:snapshot-2:1-2"]
    assert receiver.outcomes == ["applied", "applied", "repeat"]


@pytest.mark.parametrize(
    ("kind", "snapshot_seq"), [("snapshot", None), ("changes", None), ("reset", 3)]
)
def test_a_malformed_send_is_a_programming_error(driver, receiver, kind, snapshot_seq):
    with pytest.raises(ValueError):
        driver.send(
            sink(receiver.url),
            RECORDS,
            kind=kind,
            epoch=1,
            first_seq=1,
            last_seq=2,
            snapshot_seq=snapshot_seq,
        )
    assert receiver.count == 0


def test_messages_reuse_one_pooled_connection(driver, receiver):
    target = sink(receiver.url)
    for seq in range(1, 6):
        batch(driver, target, seq, seq)
    assert receiver.outcomes == ["applied"] * 5
    assert len(set(receiver.client_ports)) == 1


def test_threads_can_share_the_driver(driver, receiver):
    targets = [sink(receiver.url) for _ in range(8)]
    errors: list[BaseException] = []

    def stream(target: Any) -> None:
        try:
            for seq in range(1, 11):
                batch(driver, target, seq, seq)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert receiver.violations == []
    for target in targets:
        assert receiver.contents(target.uid) == multiset(*({"seq": s} for s in range(1, 11)))


def test_credentials_in_the_url_are_sent_as_basic_auth(driver, receiver):
    batch(driver, sink(receiver.url.replace("http://", "http://user:pw@")), 1, 1)
    assert receiver.headers[0]["Authorization"].startswith("Basic ")


# -- retries -------------------------------------------------------------------


def test_a_failure_then_success_sends_the_same_body_again(driver, receiver):
    receiver.fail_next(2, 503)
    target = sink(receiver.url)
    batch(driver, target, 1, 2, RECORDS)
    assert receiver.outcomes == ["failed", "failed", "applied"]
    assert len(set(receiver.raw)) == 1
    assert receiver.contents() == multiset({"id": 1, "total": 10}, {"id": 2, "total": "é"})


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_answers_are_retried(driver, receiver, status):
    receiver.fail_next(1, status)
    batch(driver, sink(receiver.url), 1, 1)
    assert receiver.outcomes == ["failed", "applied"]


def test_max_retries_takes_effect_with_default_timeouts_and_lease(driver, receiver):
    receiver.fail_next(100, 503)
    target = sink(receiver.url, max_retries=3, timeout={"connect": 5, "read": 10})
    with lease(30), pytest.raises(TransportError) as caught:
        batch(driver, target, 1, 1)
    assert receiver.count == 4
    assert caught.value.attempts == 4
    assert caught.value.poison is False
    message = str(caught.value)
    assert "4 attempts" in message and "HTTP 503: " in message


def test_a_receiver_that_never_answers_costs_at_most_an_attempt_cap_per_attempt(driver, receiver):
    receiver.hang()
    # Default timeouts (5 s to connect, 10 s to read) are cut to a third of the lease: 0.3 s.
    target = sink(receiver.url, max_retries=2, timeout={"connect": 5, "read": 10})
    started = time.monotonic()
    with lease(0.9), pytest.raises(TransportError) as caught:
        batch(driver, target, 1, 1)
    elapsed = time.monotonic() - started
    assert receiver.outcomes == ["hung"] * 3
    assert caught.value.attempts == 3
    assert caught.value.poison is False
    assert "could not connect or got no answer" in str(caught.value)
    assert 0.85 < elapsed < 1.6


def test_reading_a_trickling_answer_stops_at_the_attempt_cap(driver):
    with trickling_receiver(503, 0.02) as url:
        started = time.monotonic()
        with lease(0.9), pytest.raises(TransportError) as caught:
            batch(driver, sink(url, max_retries=0), 1, 1)
        elapsed = time.monotonic() - started
    assert elapsed < 0.6  # a third of the lease and one read; the whole answer takes 2000 s
    assert "HTTP 503: x" in str(caught.value)


def test_without_an_app_the_configured_read_timeout_holds(driver, receiver):
    receiver.hang()
    target = sink(receiver.url, max_retries=1, timeout={"connect": 1, "read": 0.2})
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        batch(driver, target, 1, 1)
    assert time.monotonic() - started < 1
    assert caught.value.attempts == 2


def test_unreachable_receiver_is_retried_then_fails(driver):
    url = f"http://127.0.0.1:{unused_port()}/in"
    with pytest.raises(TransportError) as caught:
        batch(driver, sink(url, max_retries=2), 1, 1)
    assert caught.value.attempts == 3
    assert caught.value.poison is False
    assert "could not connect or got no answer" in str(caught.value)


def test_retry_after_is_bounded_by_the_backoff_cap(driver, receiver):
    receiver.fail_next(1, 503, {"Retry-After": "3600"})
    started = time.monotonic()
    batch(driver, sink(receiver.url, backoff={"base": 0.01, "cap": 0.2}), 1, 1)
    assert time.monotonic() - started < 1.5
    assert receiver.outcomes == ["failed", "applied"]


def test_keep_alive_is_called_before_each_retry_only(driver, receiver):
    seen: list[int] = []
    receiver.fail_next(2)
    target = sink(receiver.url)
    batch(driver, target, 1, 1, keep_alive=lambda: seen.append(receiver.count))
    assert seen == [1, 2]  # after attempts 1 and 2, before attempts 2 and 3
    batch(driver, target, 2, 2, keep_alive=lambda: seen.append(receiver.count))
    assert seen == [1, 2]  # no retry, no call

    receiver.fail_next(100)
    with pytest.raises(TransportError):
        batch(driver, sink(receiver.url, max_retries=2), 1, 1, keep_alive=lambda: seen.append(0))
    assert seen == [1, 2, 0, 0]  # not after the last attempt: there is no retry to renew for


def test_a_long_wait_renews_the_lease_every_attempt_cap(driver, receiver):
    calls: list[float] = []
    receiver.fail_next(1, 429, {"Retry-After": "1"})
    target = sink(receiver.url, backoff={"base": 0.01, "cap": 5})
    started = time.monotonic()
    with lease(0.9):
        batch(driver, target, 1, 1, keep_alive=lambda: calls.append(time.monotonic()))
    elapsed = time.monotonic() - started
    assert receiver.outcomes == ["failed", "applied"]
    assert 1 <= elapsed < 2  # Retry-After honoured
    assert len(calls) == 4  # 1 s in pieces of at most 0.3 s: 0.3, 0.3, 0.3, 0.1
    gaps = [later - earlier for earlier, later in zip([started, *calls], calls, strict=False)]
    assert max(gaps) < 0.45


def test_what_keep_alive_raises_propagates_unchanged(driver, receiver):
    class LeaseGone(Exception):
        pass

    gone = LeaseGone("connector 1")

    def keep_alive() -> None:
        raise gone

    receiver.fail_next(100)
    with lease(30), pytest.raises(LeaseGone) as caught:
        batch(driver, sink(receiver.url), 1, 1, keep_alive=keep_alive)
    assert caught.value is gone
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    assert receiver.count == 1


# -- refusals ------------------------------------------------------------------


def test_a_refusal_is_poison_and_quotes_the_answer_but_no_secret_of_the_url(driver, receiver):
    receiver.refuse(400, '{"error": "bad record"}')
    url = receiver.url.replace("http://", "http://user:hunter2@") + "?token=s3cret"
    with pytest.raises(TransportError) as caught:
        batch(driver, sink(url), 1, 1)
    assert str(caught.value) == (
        f'POST {receiver.url} refused the batch: HTTP 400: {{"error": "bad record"}}'
    )
    assert caught.value.poison is True
    assert caught.value.attempts == 1
    assert receiver.count == 1


@pytest.mark.parametrize("status", [307, 400, 401, 403, 404, 409, 413, 422])
def test_other_answers_are_refusals_and_not_retried(driver, receiver, status):
    receiver.refuse(status, "")
    with pytest.raises(TransportError) as caught:
        batch(driver, sink(receiver.url), 1, 1)
    assert receiver.count == 1
    assert caught.value.attempts == 1
    assert caught.value.poison is True
    assert str(caught.value).endswith(f"refused the batch: HTTP {status}")


def test_a_refused_snapshot_and_reset_say_which_message_it_was(driver, receiver):
    target = sink(receiver.url)
    receiver.refuse(413, "too big\n" + "x" * 500)
    with pytest.raises(TransportError) as caught:
        snapshot(driver, target, 1, RECORDS, epoch=1, at=0)
    assert f"refused the snapshot batch: HTTP 413: too big {'x' * 192}" in str(caught.value)
    assert str(caught.value).endswith("x" * 192)
    with pytest.raises(TransportError) as caught:
        driver.reset(target, epoch=1, snapshot_seq=0)
    assert "refused the reset: HTTP 413" in str(caught.value)


def test_a_receiver_that_lost_changes_says_where_it_stands_and_the_sink_diverged(driver, receiver):
    target = sink(receiver.url)
    batch(driver, target, 1, 4, epoch=2)
    receiver.forget()  # restored from an empty backup
    with pytest.raises(SinkDiverged) as caught:
        batch(driver, target, 5, 6, epoch=2)
    assert receiver.outcomes[-1] == "behind" and receiver.count == 2  # not retried
    assert str(caught.value) == (
        f"POST {receiver.url}: the receiver holds changes up to position 0 only, and the "
        "batch starts after 4; it lost changes it had acknowledged, so the snapshot is redone"
    )
    assert receiver.contents() == Counter() and receiver.violations == []


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        '{"applied_seq": 4}',  # not behind a batch that starts after 4
        '{"applied_seq": 9}',
        '{"applied_seq": -1}',
        '{"applied_seq": true}',
        '{"applied_seq": "2"}',
        "[1]",
        "[" * 5000 + "]" * 5000,
    ],
)
def test_a_409_that_does_not_say_the_receiver_is_behind_is_a_refusal(driver, receiver, body):
    receiver.refuse(409, body)
    with pytest.raises(TransportError) as caught:
        batch(driver, sink(receiver.url), 5, 6)
    assert not isinstance(caught.value, SinkDiverged)
    assert caught.value.poison is True and "refused the batch: HTTP 409" in str(caught.value)


def test_only_a_batch_can_find_the_receiver_behind(driver, receiver):
    receiver.refuse(409, '{"applied_seq": 0}')
    target = sink(receiver.url)
    with pytest.raises(TransportError) as caught:
        snapshot(driver, target, 3, RECORDS, epoch=1, at=10)
    assert not isinstance(caught.value, SinkDiverged) and caught.value.poison is True
    with pytest.raises(TransportError) as caught:
        driver.reset(target, epoch=1, snapshot_seq=10)
    assert not isinstance(caught.value, SinkDiverged) and caught.value.poison is True


# -- the reference receiver ----------------------------------------------------


def test_receiver_applies_in_order_and_drops_repeats_and_stale_epochs(driver, receiver):
    a, b, c = {"id": "a"}, {"id": "b"}, {"id": "c"}
    target = sink(receiver.url)
    batch(driver, target, 1, 2, [{"insert": a}, {"insert": b}], epoch=1)
    batch(driver, target, 1, 2, [{"insert": a}, {"insert": b}], epoch=1)  # a repeat
    driver.reset(target, epoch=2, snapshot_seq=2)
    assert receiver.contents() == Counter()
    snapshot(driver, target, 1, [{"insert": a}], epoch=2, at=2)
    snapshot(driver, target, 2, [{"insert": b}], epoch=2, at=2)
    snapshot(driver, target, 1, [{"insert": a}], epoch=2, at=2)  # a repeat
    batch(driver, target, 3, 3, [{"delete": a}], epoch=1)  # the old sender: stale
    batch(driver, target, 3, 3, [{"delete": a}], epoch=2)
    batch(driver, target, 3, 3, [{"delete": a}], epoch=3)  # resent after a takeover
    batch(driver, target, 4, 4, [{"insert": c}], epoch=3)
    assert receiver.outcomes == [
        "applied",
        "repeat",
        "applied",
        "applied",
        "applied",
        "repeat",
        "stale",
        "applied",
        "repeat",
        "applied",
    ]
    assert receiver.violations == []
    assert receiver.contents() == multiset(b, c)
    state = receiver.state(target.uid)
    assert (state.epoch, state.applied_seq, state.snapshot_applied) == (3, 4, 2)


def test_receiver_keeps_connectors_apart_by_id(driver, receiver):
    old, new = sink(receiver.url), sink(receiver.url)  # same name, re-created
    batch(driver, old, 1, 1, [{"insert": {"id": 1}}])
    batch(driver, new, 1, 1, [{"insert": {"id": 2}}])
    assert receiver.outcomes == ["applied", "applied"]
    assert receiver.contents(old.uid) == multiset({"id": 1})
    assert receiver.contents(new.uid) == multiset({"id": 2})
    with pytest.raises(AssertionError):
        receiver.contents()


def test_receiver_with_nothing_received_holds_nothing(receiver):
    assert receiver.contents() == Counter()
    assert receiver.contents("no-such-connector") == Counter()


def test_an_answer_lost_after_applying_is_resent_and_dropped_as_a_repeat(driver, receiver):
    receiver.lose_answers(1)
    batch(driver, sink(receiver.url), 1, 2, RECORDS)
    assert receiver.outcomes == ["lost", "repeat"]
    assert receiver.violations == []
    assert receiver.contents() == multiset({"id": 1, "total": 10}, {"id": 2, "total": "é"})


def test_receiver_notes_a_gap(driver, receiver):
    target = sink(receiver.url)
    batch(driver, target, 1, 1)
    batch(driver, target, 3, 3)
    assert len(receiver.violations) == 1
    assert "a gap: applied_seq is 1" in receiver.violations[0]


def test_receiver_notes_a_delete_of_a_record_it_does_not_hold(driver, receiver):
    batch(driver, sink(receiver.url), 1, 1, [{"delete": {"id": 1}}])
    assert len(receiver.violations) == 1
    assert "a delete of a record not held" in receiver.violations[0]
    assert receiver.contents() == Counter()


def test_receiver_notes_a_snapshot_after_batches_of_the_same_reset(driver, receiver):
    target = sink(receiver.url)
    driver.reset(target, epoch=1, snapshot_seq=0)
    batch(driver, target, 1, 1)
    snapshot(driver, target, 1, RECORDS, epoch=1, at=0)
    assert len(receiver.violations) == 1
    assert "a snapshot after batches" in receiver.violations[0]


@contextmanager
def dripping_headers_receiver(interval: float) -> Iterator[str]:
    """A server that answers its status line at once, then one header byte per ``interval``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.is_set():
                    try:
                        conn.sendall(b"X")  # a header line that never ends
                    except OSError:
                        break
                    time.sleep(interval)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/in"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_receiver_dripping_its_headers_is_cut_off_at_the_attempt_cap(driver):
    """Each wait for a byte is short, so socket timeouts never fire: the attempt as a whole
    is cut at a third of the lease, and counted as a failure to retry later."""
    with dripping_headers_receiver(0.05) as url:
        started = time.monotonic()
        with lease(0.9), pytest.raises(TransportError) as caught:
            batch(driver, sink(url, max_retries=1, backoff={"base": 0.01, "cap": 0.01}), 1, 1)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5  # two attempts of a third of the lease; the headers never end
    assert caught.value.attempts == 2 and caught.value.poison is False
    assert "could not connect or got no answer" in str(caught.value)
