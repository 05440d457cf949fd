"""Delivery: the worker streams view changes to sinks, once, in order, while the pipeline runs."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.connectors.models import Connector
from app.delivery.worker import DeliveryWorker, backoff_seconds
from app.extensions import db
from app.resets.executor import ResetExecutor
from app.resets.models import Reset
from app.transports import TransportError
from app.transports.file import FileTransport, SinkFile, StagingFile
from app.worker import run_once
from tests.conftest import assert_error
from tests.faults import time_passes

CHANGES = "/v0/pipelines/orders/views/totals/changes"
STATS = "/v0/pipelines/orders/views/totals/connectors/{}/stats"


class SimulatedCrash(BaseException):
    """A worker dying on the spot: no handler runs, the lease stays taken."""


def push(client, changes: list[dict]) -> dict:
    """Push a batch to orders/totals; return the answer."""
    r = client.post(CHANGES, json=changes)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def inserts(start: int, count: int) -> list[dict]:
    """``count`` inserts of records numbered from ``start``."""
    return [{"insert": {"id": i, "name": f"r{i}"}} for i in range(start, start + count)]


def deliver(app, owner: str = "worker-1", **kwargs: Any) -> int:
    """Run a delivery worker until nothing is left; return how many claims it made."""
    with app.app_context():
        try:
            return DeliveryWorker(owner, **kwargs).run_pending()
        finally:
            db.session.remove()


def sink_lines(tmp_path: Path, name: str = "out/totals.jsonl") -> list[dict]:
    """The JSON lines of a file sink."""
    path = tmp_path / "sinks" / "default" / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def fold(lines: list[dict]) -> Counter:
    """Fold insert/delete lines into a multiset of canonical records."""
    folded: Counter = Counter()
    for line in lines:
        ((op, record),) = line.items()
        folded[json.dumps(record, sort_keys=True)] += 1 if op == "insert" else -1
    return +folded


def expire_leases(app) -> None:
    """Let every connector lease run out (as if its holder died long ago)."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with app.app_context():
        db.session.execute(
            sa.update(Connector)
            .where(Connector.lease_owner.is_not(None))
            .values(lease_expires_at=past)
        )
        time_passes()
        db.session.commit()
        db.session.remove()


def stats(client, connector: str = "sink1") -> dict:
    """The stats of a connector of orders/totals."""
    r = client.get(STATS.format(connector))
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_changes_reach_the_file_sink_in_order(running_pipeline, client, app, tmp_path):
    push(client, inserts(0, 3))
    push(client, [{"delete": {"id": 1, "name": "r1"}}, *inserts(3, 1)])
    assert deliver(app) == 1
    lines = sink_lines(tmp_path)
    assert lines == [*inserts(0, 3), {"delete": {"id": 1, "name": "r1"}}, *inserts(3, 1)]
    assert deliver(app) == 0  # nothing left to do


def test_delivery_goes_in_batches_from_the_durable_offset(running_pipeline, client, app, tmp_path):
    push(client, inserts(0, 25))
    with app.app_context():
        worker = DeliveryWorker("w", batch_size=10, max_batches=2)
        assert worker.run_once()
        assert db.session.get(Connector, 1).delivered_seq == 20
        db.session.remove()
    assert len(sink_lines(tmp_path)) == 20
    deliver(app, batch_size=10)
    assert sink_lines(tmp_path) == inserts(0, 25)


def test_stats_show_what_was_transmitted_and_what_waits(running_pipeline, client, app, tmp_path):
    push(client, inserts(0, 4))
    body = stats(client)
    assert body["queued_records"] == 4 and body["transmitted_records"] == 0
    assert body["health"] == "healthy" and body["transport"]["name"] == "file"
    connector = running_pipeline.client.get("/v0/pipelines/orders/views/totals/connectors/sink1")
    assert body["transport"] == connector.get_json()["transport"]
    deliver(app)
    body = stats(client)
    size = (tmp_path / "sinks" / "default" / "out" / "totals.jsonl").stat().st_size
    assert body["transmitted_records"] == 4 and body["transmitted_bytes"] == size
    assert body["queued_records"] == 0 and body["delivered_seq"] == body["log_end"] == 4
    assert body["resets"] == {
        "count": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "abandoned": 0,
        "last_status": None,
        "last_phase": None,
        "last_requested_at": None,
        "last_completed_at": None,
        "last_origin": None,
        "last_attempts": None,
        "last_error": None,
    }
    assert body["sync_state"] == "in_sync" and body["sync_reason"] is None


def test_stats_of_an_unknown_connector_answer_404(running_pipeline, client):
    assert_error(client.get(STATS.format("nope")), 404, "UnknownConnector")


def test_paused_pipeline_delivers_nothing_until_resumed(running_pipeline, client, app, tmp_path):
    running_pipeline.action("orders", "pause")
    push(client, inserts(0, 2))
    assert deliver(app) == 0
    assert sink_lines(tmp_path) == []
    assert stats(client)["health"] == "paused"
    running_pipeline.action("orders", "resume")
    deliver(app)
    assert sink_lines(tmp_path) == inserts(0, 2)


def test_stopped_pipeline_delivers_nothing(running_pipeline, client, app, tmp_path):
    push(client, inserts(0, 2))
    running_pipeline.action("orders", "stop")
    assert deliver(app) == 0
    assert stats(client)["health"] == "stopped"
    running_pipeline.action("orders", "start")
    deliver(app)
    assert sink_lines(tmp_path) == inserts(0, 2)


def test_every_connector_of_a_view_gets_every_change(api, client, app, tmp_path):
    api.create_pipeline()
    api.add_file_connector(name="a", path="a.jsonl")
    api.add_file_connector(name="b", path="b.jsonl")
    api.action("orders", "start")
    push(client, inserts(0, 5))
    assert deliver(app) == 2
    assert sink_lines(tmp_path, "a.jsonl") == sink_lines(tmp_path, "b.jsonl") == inserts(0, 5)


def test_a_batch_written_but_not_recorded_is_cut_back_and_written_once(
    running_pipeline, client, app, tmp_path, monkeypatch
):
    push(client, inserts(0, 3))
    deliver(app)
    push(client, inserts(3, 3))
    real = SinkFile.write_at

    def write_then_die(self, offset, data):
        real(self, offset, data)
        raise SimulatedCrash

    monkeypatch.setattr(SinkFile, "write_at", write_then_die)
    with pytest.raises(SimulatedCrash):
        deliver(app, owner="doomed")
    assert len(sink_lines(tmp_path)) == 6  # written, but the offset still says 3
    monkeypatch.setattr(SinkFile, "write_at", real)
    assert deliver(app, owner="heir") == 0  # the dead worker's lease still holds
    assert stats(client)["lease_takeovers"] == 0  # leases given back are not taken over
    expire_leases(app)
    deliver(app, owner="heir")
    assert sink_lines(tmp_path) == inserts(0, 6)
    assert stats(client)["lease_takeovers"] == 1  # the heir took the dead worker's lease


def test_two_workers_at_once_deliver_each_change_once(running_pipeline, client, app, tmp_path):
    for start in range(0, 3000, 500):
        push(client, inserts(start, 500))
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(owner: str) -> None:
        start.wait()
        try:
            with app.app_context():
                worker = DeliveryWorker(owner, batch_size=50, max_batches=3)
                executor = ResetExecutor(owner)
                for _ in range(500):
                    run_once(executor, worker)
                    db.session.remove()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    deliver(app)
    assert sink_lines(tmp_path) == inserts(0, 3000)


def test_failures_are_counted_backed_off_and_cleared_on_success(
    running_pipeline, client, app, tmp_path, monkeypatch
):
    push(client, inserts(0, 2))
    real = SinkFile.write_at

    def refuse(self, offset, data):
        raise TransportError("disk on fire")

    monkeypatch.setattr(SinkFile, "write_at", refuse)
    assert deliver(app) == 1
    body = stats(client)
    assert body["health"] == "failing" and body["transport_errors"] == 1
    assert body["last_error"] == "disk on fire" and body["last_error_at"]
    assert body["queued_records"] == 2 and body["next_attempt_at"] > body["last_error_at"]
    assert deliver(app) == 0  # backing off
    with app.app_context():
        db.session.execute(sa.update(Connector).values(next_attempt_at=None))
        time_passes()
        db.session.commit()
    deliver(app)
    assert stats(client)["consecutive_failures"] == 2
    monkeypatch.setattr(SinkFile, "write_at", real)
    with app.app_context():
        db.session.execute(sa.update(Connector).values(next_attempt_at=None))
        time_passes()
        db.session.commit()
    deliver(app)
    body = stats(client)
    assert body["health"] == "healthy" and body["transport_errors"] == 2
    assert body["queued_records"] == 0
    assert sink_lines(tmp_path) == inserts(0, 2)


def test_backoff_doubles_up_to_the_cap(app):
    with app.app_context():
        assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
        assert backoff_seconds(100) == 60


def test_reset_replays_the_snapshot_then_streams_on(running_pipeline, client, app, tmp_path):
    push(client, inserts(0, 5))
    push(client, [{"delete": {"id": 0, "name": "r0"}}, {"insert": {"id": 1, "name": "r1"}}])
    deliver(app)
    token = running_pipeline.reset()
    push(client, inserts(10, 1))  # queued reset: nothing more is delivered before it
    assert deliver(app) == 0
    with app.app_context():
        assert ResetExecutor("r").run_pending() == 1
        db.session.remove()
    body = running_pipeline.status(token).get_json()
    assert body["status"] == "complete"
    # The snapshot was taken when the reset started, so it holds record 10 too.
    assert body["snapshot_records"] == body["replayed_records"] == 6
    lines = sink_lines(tmp_path)
    assert all("insert" in line for line in lines)
    assert fold(lines) == fold([*inserts(1, 4), *inserts(1, 1), *inserts(10, 1)])
    push(client, [{"delete": {"id": 2, "name": "r2"}}])
    deliver(app)
    assert sink_lines(tmp_path)[6:] == [{"delete": {"id": 2, "name": "r2"}}]
    body = stats(client)
    assert body["resets"]["count"] == 1 and body["resets"]["completed"] == 1
    assert body["resets"]["last_status"] == "complete" and body["queued_records"] == 0


def test_a_gap_in_the_change_log_sends_the_connector_to_a_snapshot(
    running_pipeline, client, app, tmp_path
):
    from app.view_data.models import ViewChange

    push(client, inserts(0, 3))
    deliver(app)
    push(client, inserts(3, 4))
    with app.app_context():
        # Changes 4 and 5 gone before this connector got them (a log compacted past it).
        db.session.execute(sa.delete(ViewChange).where(ViewChange.seq.in_([4, 5])))
        db.session.commit()
    deliver(app)
    body = stats(client)
    assert body["sync_state"] == "resetting" and body["delivered_seq"] == 3
    assert "no longer holds the changes after position 3" in body["sync_reason"]
    assert sink_lines(tmp_path) == inserts(0, 3)  # nothing written past the gap
    with app.app_context():
        assert run_once()  # the redo is queued and carried out
        while run_once():
            pass
        db.session.remove()
    assert stats(client)["sync_state"] == "in_sync"
    assert fold(sink_lines(tmp_path)) == fold(inserts(0, 7))


def test_changes_pushed_during_a_replay_follow_the_snapshot(
    running_pipeline, client, app, tmp_path, monkeypatch
):
    push(client, inserts(0, 30))
    real = StagingFile.append
    pushed = []

    def append_and_push(self, data):
        written = real(self, data)
        if not pushed:
            pushed.append(push(client, [{"delete": {"id": 0, "name": "r0"}}, *inserts(30, 2)]))
        return written

    monkeypatch.setattr(StagingFile, "append", append_and_push)
    token = running_pipeline.reset()
    with app.app_context():
        app.config["REPLAY_BATCH_SIZE"] = 7
        ResetExecutor("r").run_pending()
        db.session.remove()
    assert pushed, "the replay did not run"
    assert running_pipeline.status(token).get_json()["snapshot_records"] == 30
    assert fold(sink_lines(tmp_path)) == fold(inserts(0, 30))
    deliver(app)
    lines = sink_lines(tmp_path)
    assert lines[30:] == [{"delete": {"id": 0, "name": "r0"}}, *inserts(30, 2)]
    assert fold(lines) == fold(inserts(1, 31))


def test_a_reset_killed_mid_replay_is_redone_from_the_start(
    running_pipeline, client, app, tmp_path, monkeypatch
):
    push(client, inserts(0, 20))
    deliver(app)
    real = StagingFile.append
    calls = []

    def die_on_second_batch(self, data):
        calls.append(data)
        written = real(self, data)
        if len(calls) == 2:
            raise SimulatedCrash
        return written

    monkeypatch.setattr(StagingFile, "append", die_on_second_batch)
    token = running_pipeline.reset()
    app.config["REPLAY_BATCH_SIZE"] = 5
    with app.app_context(), pytest.raises(SimulatedCrash):
        ResetExecutor("doomed").run_pending()
    body = running_pipeline.status(token).get_json()
    assert body["phase"] == "replaying_snapshot" and body["replayed_records"] == 5
    # Readers still see the old file whole: the new one is switched in at the end.
    assert sink_lines(tmp_path) == inserts(0, 20)
    assert stats(client)["sync_state"] == "resetting"
    push(client, inserts(20, 1))
    assert deliver(app) == 0  # the reset still holds the connector
    expire_leases(app)
    assert deliver(app) == 0  # a started reset blocks delivery until it is done
    with app.app_context():
        assert ResetExecutor("heir").run_pending() == 1
        db.session.remove()
    body = running_pipeline.status(token).get_json()
    assert body["status"] == "complete" and body["replayed_records"] == 21
    assert body["attempts"] == 2
    deliver(app)
    assert fold(sink_lines(tmp_path)) == fold(inserts(0, 21))
    assert len(sink_lines(tmp_path)) == 21


def test_a_failed_reset_is_retried_then_fails_the_connector_visibly(
    running_pipeline, client, app, tmp_path, monkeypatch
):
    push(client, inserts(0, 3))
    deliver(app)
    app.config.update(RESET_MAX_ATTEMPTS=2, RESET_RETRY_SECONDS=0)

    def refuse(self, connector, epoch):
        raise TransportError("cannot reset")

    monkeypatch.setattr(FileTransport, "staging", refuse)
    token = running_pipeline.reset()
    with app.app_context():
        ResetExecutor("r").run_pending()
        db.session.remove()
    body = running_pipeline.status(token).get_json()
    assert body["status"] == "inprogress" and body["phase"] == "queued"
    assert body["attempts"] == 1 and body["error"] == "cannot reset"
    assert body["next_attempt_at"] > body["started_at"]
    assert stats(client)["health"] == "resetting"
    with app.app_context():
        assert ResetExecutor("r").run_pending() == 0  # backing off
        db.session.execute(sa.update(Reset).values(next_attempt_at=None))
        time_passes()
        db.session.commit()
        assert ResetExecutor("r").run_pending() == 1
        db.session.remove()
    body = running_pipeline.status(token).get_json()
    assert body["status"] == "failed" and body["attempts"] == 2
    assert body["error"] == "cannot reset"
    body = stats(client)
    assert body["health"] == "failed" and body["sync_state"] == "failed"
    assert body["sync_reason"] == "cannot reset" and body["resets"]["last_status"] == "failed"
    # A failed connector streams nothing, and its old file is untouched.
    push(client, inserts(3, 1))
    assert deliver(app) == 0
    assert sink_lines(tmp_path) == inserts(0, 3)
    # Once the sink works again, a reset brings the connector back.
    monkeypatch.undo()
    token = running_pipeline.reset()
    with app.app_context():
        ResetExecutor("r").run_pending()
        db.session.remove()
    assert running_pipeline.status(token).get_json()["status"] == "complete"
    assert stats(client)["sync_state"] == "in_sync"
    assert fold(sink_lines(tmp_path)) == fold(inserts(0, 4))


class Receiver:
    """A real HTTP server on localhost that records the messages it is sent."""

    def __init__(self, fail_first: int = 0) -> None:
        self.messages: list[dict] = []
        self.fail_first = fail_first
        self.fail_status = 503
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(receiver.fail_status)
                else:
                    receiver.messages.append(body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/in"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def test_http_sink_gets_batches_with_deterministic_ids(api, client, app, receiver):
    api.create_pipeline()
    r = client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": {"url": receiver.url}}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    push(client, inserts(0, 3))
    push(client, inserts(3, 2))
    deliver(app, batch_size=3)
    batches = [m for m in receiver.messages if m["type"] == "batch"]
    uid = batches[0]["connector_id"]
    assert [b["batch_id"] for b in batches] == [f"{uid}:1-3", f"{uid}:4-5"]
    assert [(b["first_seq"], b["last_seq"]) for b in batches] == [(1, 3), (4, 5)]
    assert [rec for b in batches for rec in b["records"]] == inserts(0, 5)
    body = stats(client, "hook")
    assert body["transmitted_records"] == 5 and body["transmitted_bytes"] > 0


def test_http_sink_failures_are_counted_then_recover(api, client, app, receiver):
    api.create_pipeline()
    config = {"url": receiver.url, "max_retries": 0}
    r = client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": config}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    receiver.fail_first = 1
    push(client, inserts(0, 2))
    deliver(app)
    body = stats(client, "hook")
    assert body["health"] == "failing" and body["transport_errors"] == 1
    assert "503" in body["last_error"]
    with app.app_context():
        db.session.execute(sa.update(Connector).values(next_attempt_at=None))
        time_passes()
        db.session.commit()
    deliver(app)
    assert stats(client, "hook")["health"] == "healthy"
    assert [(m["first_seq"], m["last_seq"]) for m in receiver.messages] == [(1, 2)]


def test_a_batch_the_http_sink_refuses_fails_the_connector_until_a_reset(
    api, client, app, receiver
):
    api.create_pipeline()
    r = client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": {"url": receiver.url}}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    receiver.fail_first, receiver.fail_status = 1, 422
    push(client, inserts(0, 2))
    deliver(app)
    body = stats(client, "hook")
    assert body["health"] == "failed" and body["sync_state"] == "failed"
    assert "HTTP 422" in body["last_error"] and body["sync_reason"] == body["last_error"]
    assert deliver(app) == 0  # not retried silently
    api.reset(connector="hook")
    with app.app_context():
        ResetExecutor("r").run_pending()
        db.session.remove()
    assert stats(client, "hook")["sync_state"] == "in_sync"
    kinds = [m["type"] for m in receiver.messages]
    assert kinds == ["reset", "snapshot"]
    assert [rec for rec in receiver.messages[1]["records"]] == inserts(0, 2)


def test_a_sink_that_diverges_at_every_batch_is_redone_a_few_times_then_failed(api, client, app):
    """A receiver answering every batch 409 {"applied_seq": 0} would have its snapshot
    redone at every pushed change, for ever: the redos back off, and after
    REDO_MAX_IN_WINDOW of them within the window the connector is failed, saying why."""
    from app.worker import run_once
    from tests.receiver import Receiver as ReferenceReceiver

    app.config.update(REDO_MAX_IN_WINDOW=3, DELIVERY_RETRY_BASE_SECONDS=30)
    with ReferenceReceiver() as sink:
        transport = {"name": "http", "config": {"url": sink.url, "max_retries": 0}}
        api.create_pipeline()
        r = client.post(
            "/v0/pipelines/orders/views/totals/connectors",
            json={"name": "hook", "transport": transport},
        )
        assert r.status_code == 201
        api.action("orders", "start")

        def work_until_idle() -> None:
            with app.app_context():
                while run_once():
                    pass
                db.session.remove()

        push(client, inserts(1000, 5))
        work_until_idle()  # delivered: the receiver holds up to position 5
        sink.behind_at_every_batch()

        redos = []
        for n in range(12):
            push(client, inserts(n, 1))
            work_until_idle()
            body = stats(client, "hook")
            redos.append(body["resets"]["count"])
            if body["health"] == "failed":
                break
            if body["next_attempt_at"]:
                # Backing off: a push does not bring the redo forward; time passing does.
                push(client, inserts(100 + n, 1))
                work_until_idle()
                assert stats(client, "hook")["resets"]["count"] == redos[-1]
                with app.app_context():
                    time_passes()
                    db.session.commit()
                    db.session.remove()
                work_until_idle()
    body = stats(client, "hook")
    assert body["health"] == "failed", body
    assert "redone 3 times" in body["sync_reason"]
    assert body["resets"]["count"] == 3
    assert "applied_seq" in body["last_error"] or "position 0" in body["last_error"]


def test_a_reset_rides_out_a_sink_outage_of_minutes(running_pipeline, client, app, monkeypatch):
    """Ten failed attempts in a row, well past RESET_MAX_ATTEMPTS, within the retry
    budget in time: the reset goes on (its next attempt shown in its status and in the
    connector's stats), and completes once the sink is back."""
    push(client, inserts(0, 3))
    deliver(app)
    app.config.update(RESET_MAX_ATTEMPTS=3, RESET_RETRY_SECONDS=600)
    real = FileTransport.staging
    outage = {"on": True}

    def staging(self, connector, epoch):
        if outage["on"]:
            raise TransportError("No space left on device")
        return real(self, connector, epoch)

    monkeypatch.setattr(FileTransport, "staging", staging)
    token = running_pipeline.reset()
    for _attempt in range(10):
        with app.app_context():
            assert ResetExecutor("r").run_pending() == 1
            time_passes()  # the backoff runs out; the reset itself is a minute old at most
            db.session.commit()
            db.session.remove()
        body = running_pipeline.status(token).get_json()
        assert body["status"] == "inprogress" and body["next_attempt_at"], body
        assert stats(client)["next_attempt_at"]
    outage["on"] = False
    with app.app_context():
        assert ResetExecutor("r").run_pending() == 1
        db.session.remove()
    body = running_pipeline.status(token).get_json()
    assert body["status"] == "complete" and body["attempts"] == 11
    assert stats(client)["health"] == "healthy"


def test_a_sink_error_quoting_pushed_text_cannot_forge_a_log_line(
    running_pipeline, client, app, monkeypatch, caplog
):
    """A sink's message may quote what was pushed (PostgreSQL's "invalid input syntax
    for type integer: ..."): its control characters are escaped in the stats and the log."""
    forged = "1\n2026-12-07 10:00:00,000 CRITICAL app: forged\r\x1b[2J"

    def refuse(self, offset, data):
        raise TransportError(f'invalid input syntax for type integer: "{forged}"')

    monkeypatch.setattr(SinkFile, "write_at", refuse)
    push(client, [{"insert": {"id": forged}}])
    with caplog.at_level("WARNING"):
        deliver(app)
    error = stats(client)["last_error"]
    assert "\n" not in error and "\r" not in error and "\x1b" not in error
    assert "\\n2026-12-07 10:00:00,000 CRITICAL" in error
    lines = [
        record.getMessage() for record in caplog.records if "delivery of" in record.getMessage()
    ]
    assert lines and all("\n" not in line and "\x1b" not in line for line in lines)
