"""A reset's lifecycle beyond issue and poll: cancel, attach, preview, phases and rate.

In process, on the suite's database (SQLite, or PostgreSQL with
``PIPELINE_MANAGER_TEST_DATABASE_URL``). The cancel racing a real worker's
final switch is in tests/test_faults.py, a cancel of a table sink's staged
reset under a real worker in tests/test_table_sink_faults.py; the event stream
in tests/test_reset_events.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app.connectors.models import Connector
from app.delivery.worker import DeliveryWorker
from app.extensions import db
from app.resets import service as reset_service
from app.resets.executor import ResetExecutor, queue_owed_reset
from app.resets.models import Reset
from tests.conftest import Api, assert_error
from tests.faults import time_passes

PIPELINE = "/v0/pipelines/orders"
RESET = PIPELINE + "/views/totals/connectors/sink1/reset"
CHANGES = PIPELINE + "/views/totals/changes"
STATS = PIPELINE + "/views/totals/connectors/sink1/stats"
HISTORY = PIPELINE + "/views/totals/connectors/sink1/resets"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Small replay batches, so that a test can step in between two of them."""
    return {**app_config, "REPLAY_BATCH_SIZE": 3}


def push(api: Api, first: int, count: int) -> None:
    changes = [{"insert": {"id": i, "name": f"r{i}"}} for i in range(first, first + count)]
    r = api.client.post(CHANGES, json=changes)
    assert r.status_code == 200, r.get_json()


def deliver(app: Flask) -> None:
    with app.app_context():
        DeliveryWorker("test-deliverer").run_pending()
        db.session.remove()


def sink(app: Flask) -> Path:
    return Path(app.config["SINK_DIR"]) / "default" / "out" / "totals.jsonl"


def lines(app: Flask) -> list[dict]:
    return [json.loads(line) for line in sink(app).read_text().splitlines()]


def cancel(api: Api, token: str | None, **kwargs: Any):
    query = {} if token is None else {"token": token}
    return api.client.post(PIPELINE + "/reset_cancel", query_string=query, **kwargs)


def stats(api: Api) -> dict:
    r = api.client.get(STATS)
    assert r.status_code == 200
    return r.get_json()


@pytest.fixture
def streaming(running_pipeline: Api, app: Flask) -> Api:
    """orders/totals/sink1 running, with 10 records delivered to its file."""
    push(running_pipeline, 0, 10)
    deliver(app)
    assert len(lines(app)) == 10
    return running_pipeline


def run_resets_stepping_in(app: Flask, step: Any, after_batches: int = 1) -> int:
    """Run the executor; call ``step()`` once after ``after_batches`` replay batches."""
    original = ResetExecutor._replay
    seen = {"batches": 0}

    def replay(self: ResetExecutor, *args: Any, **kwargs: Any) -> int:
        sent = original(self, *args, **kwargs)
        seen["batches"] += 1
        if seen["batches"] == after_batches:
            step()
        return sent

    ResetExecutor._replay = replay
    try:
        with app.app_context():
            done = ResetExecutor(owner="test-worker").run_pending()
            db.session.remove()
            return done
    finally:
        ResetExecutor._replay = original


# -- cancel ---------------------------------------------------------------------------------


def test_cancelling_a_queued_reset_leaves_the_connector_streaming_on(
    streaming: Api, app: Flask, run_resets: Any
) -> None:
    before = sink(app).read_bytes()
    token = streaming.reset()
    r = cancel(streaming, token)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["status"] == "cancelled" and body["completed_at"] is not None
    assert r.headers["Cache-Control"] == "no-store"
    assert streaming.status(token).get_json()["status"] == "cancelled"
    assert run_resets() == 0  # nothing left to run
    assert sink(app).read_bytes() == before
    push(streaming, 10, 2)
    deliver(app)
    assert [line["insert"]["id"] for line in lines(app)] == list(range(12))
    resets = stats(streaming)["resets"]
    assert (resets["cancelled"], resets["completed"], resets["last_status"]) == (1, 0, "cancelled")
    history = streaming.client.get(HISTORY).get_json()
    assert [item["status"] for item in history] == ["cancelled"]


def test_cancelling_a_file_reset_mid_replay_keeps_the_sink_byte_for_byte(
    streaming: Api, app: Flask
) -> None:
    before = sink(app).read_bytes()
    token = streaming.reset()
    answers = []

    def cancel_now() -> None:
        answers.append(cancel(streaming, token))
        # The staging file is there; the sink is as it was.
        assert sink(app).read_bytes() == before

    run_resets_stepping_in(app, cancel_now, after_batches=2)
    assert answers[0].status_code == 200, answers[0].get_json()
    assert answers[0].get_json()["status"] == "cancelled"
    assert sink(app).read_bytes() == before
    assert sorted(p.name for p in sink(app).parent.iterdir()) == ["totals.jsonl"]  # no staging
    after = stats(streaming)
    assert after["sync_state"] == "in_sync" and after["delivered_seq"] == 10
    # It streams on from where it stopped: nothing repeated, nothing lost.
    push(streaming, 10, 3)
    deliver(app)
    assert [line["insert"]["id"] for line in lines(app)] == list(range(13))
    status = streaming.status(token).get_json()
    assert status["status"] == "cancelled"
    assert status["phases"][-1]["name"] == "replaying_snapshot"
    assert all(phase["ended_at"] for phase in status["phases"])


def test_changes_pushed_during_a_cancelled_reset_are_delivered_after_it(
    streaming: Api, app: Flask
) -> None:
    token = streaming.reset()

    def push_then_cancel() -> None:
        push(streaming, 10, 4)
        assert cancel(streaming, token).status_code == 200

    run_resets_stepping_in(app, push_then_cancel)
    deliver(app)
    assert [line["insert"]["id"] for line in lines(app)] == list(range(14))


def test_a_cancel_that_comes_after_the_switch_is_409_complete(
    streaming: Api, app: Flask, run_resets: Any
) -> None:
    token = streaming.reset()
    assert run_resets() == 1
    body = assert_error(cancel(streaming, token), 409, "ResetNotCancellable")
    assert body["details"]["reason"] == "complete"
    assert len(lines(app)) == 10  # the snapshot
    assert streaming.status(token).get_json()["status"] == "complete"


def test_cancelling_twice_is_409_cancelled_and_a_retried_key_gets_the_first_answer(
    streaming: Api,
) -> None:
    token = streaming.reset()
    key = {"Idempotency-Key": "cancel-1"}
    first = cancel(streaming, token, headers=key)
    assert first.status_code == 200
    again = cancel(streaming, token, headers=key)
    assert (again.status_code, again.get_json()) == (200, first.get_json())
    body = assert_error(cancel(streaming, token), 409, "ResetNotCancellable")
    assert body["details"]["reason"] == "cancelled"


def test_cancel_judges_the_token_as_reset_status_does(
    streaming: Api, read_headers: dict[str, str], app: Flask
) -> None:
    token = streaming.reset()
    assert_error(cancel(streaming, None), 400, "InvalidResetToken")
    assert_error(cancel(streaming, "garbage"), 400, "InvalidResetToken")
    r = app.test_client().post(
        PIPELINE + "/reset_cancel", query_string={"token": token}, headers=read_headers
    )
    assert_error(r, 403, "InsufficientPermissions")
    r = streaming.client.post("/v0/pipelines/nope/reset_cancel", query_string={"token": token})
    assert_error(r, 404, "UnknownPipelineName")
    streaming.action("orders", "restart")
    assert_error(cancel(streaming, token), 410, "PipelineRestarted")
    streaming.action("orders", "stop")
    assert_error(cancel(streaming, token), 503, "PipelineNotRunning")


def test_an_http_reset_is_cancellable_queued_but_not_once_the_sink_was_told(
    api: Api, app: Flask, receiver: Any
) -> None:
    api.create_pipeline()
    r = api.client.post(
        PIPELINE + "/views/totals/connectors",
        json={"name": "sink1", "transport": {"name": "http", "config": {"url": receiver.url}}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    push(api, 0, 10)
    queued = api.reset()
    assert cancel(api, queued).status_code == 200
    token = api.reset()
    assert token != queued
    answers = []
    run_resets_stepping_in(app, lambda: answers.append(cancel(api, token)))
    body = assert_error(answers[0], 409, "ResetNotCancellable")
    assert body["details"]["reason"] == "sink_reset"
    assert api.status(token).get_json()["status"] == "complete"


def test_a_redo_is_not_cancellable(streaming: Api, app: Flask) -> None:
    with app.app_context():
        db.session.execute(sa.update(Connector).values(sync_state="resetting"))
        db.session.commit()
        connector_id = db.session.scalar(sa.select(Connector.id))
        reset_id = queue_owed_reset(connector_id)
        assert reset_id is not None
        token = db.session.get(Reset, reset_id).token
        db.session.remove()
    body = assert_error(cancel(streaming, token), 409, "ResetNotCancellable")
    assert body["details"]["reason"] == "owed"


def test_a_cancel_of_a_reset_whose_executor_died_mid_replay_is_refused(
    streaming: Api, app: Flask
) -> None:
    """It may have died switching its copy in: the reset is taken over, not cancelled."""
    token = streaming.reset()

    class Died(BaseException):
        pass

    def die() -> None:
        raise Died

    with pytest.raises(Died):
        run_resets_stepping_in(app, die)
    expire_leases(app)  # its lease runs out
    body = assert_error(cancel(streaming, token), 409, "ResetNotCancellable")
    assert body["details"]["reason"] == "owed"
    # Taken over, it completes; a takeover of such a replay is not cancellable either.
    with app.app_context():
        claimed = ResetExecutor(owner="second-worker").claim()
        db.session.remove()
    assert claimed is not None
    body = assert_error(cancel(streaming, token), 409, "ResetNotCancellable")
    assert body["details"]["reason"] == "owed"


def expire_leases(app: Flask) -> None:
    """Every lease ran out a minute ago."""
    from app.database import db_time

    with app.app_context():
        db.session.execute(
            sa.update(Connector)
            .where(Connector.lease_owner.is_not(None))
            .values(lease_expires_at=db_time(-60))
        )
        time_passes()
        db.session.commit()
        db.session.remove()


def test_a_cancelled_reset_of_a_failed_connector_leaves_it_failed(
    streaming: Api, app: Flask
) -> None:
    with app.app_context():
        db.session.execute(sa.update(Connector).values(sync_state="failed", sync_reason="x"))
        db.session.commit()
        db.session.remove()
    token = streaming.reset()
    run_resets_stepping_in(app, lambda: cancel(streaming, token))
    assert stats(streaming)["sync_state"] == "failed"


# -- attach ---------------------------------------------------------------------------------


def test_concurrent_requests_attach_to_one_reset(streaming: Api, app: Flask) -> None:
    headers = {
        name[5:].replace("_", "-").title(): value
        for name, value in streaming.client.environ_base.items()
        if name.startswith("HTTP_")
    }
    barrier = threading.Barrier(6)
    answers: list[Any] = []

    def request() -> None:
        client = app.test_client()
        barrier.wait()
        answers.append(client.post(RESET, headers=headers))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 6, [a.get_json() for a in answers]
    assert len({a.get_json()["token"] for a in answers}) == 1
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Reset)) == 1
        db.session.remove()


def test_a_request_while_a_reset_replays_attaches_to_it(streaming: Api, app: Flask) -> None:
    token = streaming.reset()
    attached = []
    run_resets_stepping_in(app, lambda: attached.append(streaming.reset()))
    assert attached == [token]
    assert streaming.status(token).get_json()["status"] == "complete"
    assert len(streaming.client.get(HISTORY).get_json()) == 1


# -- preview ----------------------------------------------------------------------------------


def test_dry_run_tells_what_a_reset_would_do_and_changes_nothing(
    streaming: Api, app: Flask
) -> None:
    r = streaming.client.post(RESET, query_string={"dry_run": "true"})
    assert r.status_code == 200, r.get_json()
    preview = r.get_json()
    assert preview["action"] == "queue" and preview["reset_in_progress"] is None
    assert (preview["transport"], preview["switch"]) == ("file", "atomic")
    assert preview["snapshot_records"] == 10 and preview["log_position"] == 10
    assert preview["cancellable_until"] == "switch"
    assert "rename" in preview["readers_see"]
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Reset)) == 0
        db.session.remove()
    token = streaming.reset()
    live = streaming.client.post(RESET, query_string={"dry_run": "1"}).get_json()
    assert live["action"] == "attach"
    assert live["reset_in_progress"]["status_url"].endswith(token)
    assert live["reset_in_progress"]["cancellable"] is True
    assert streaming.client.get(live["reset_in_progress"]["status_url"]).status_code == 200


def test_dry_run_of_an_http_connector_says_the_sink_is_emptied_then_refilled(
    api: Api, receiver: Any
) -> None:
    api.create_pipeline()
    api.client.post(
        PIPELINE + "/views/totals/connectors",
        json={"name": "sink1", "transport": {"name": "http", "config": {"url": receiver.url}}},
    )
    api.action("orders", "start")
    preview = api.client.post(RESET, query_string={"dry_run": "true"}).get_json()
    assert (preview["switch"], preview["cancellable_until"]) == ("in_place", "start")
    assert preview["snapshot_records"] == 0


def test_dry_run_answers_the_errors_a_reset_would(api: Api) -> None:
    api.create_pipeline()
    api.add_file_connector()
    assert_error(
        api.client.post(RESET, query_string={"dry_run": "true"}), 503, "PipelineNotRunning"
    )
    assert_error(api.client.post(RESET, query_string={"dry_run": "maybe"}), 400, "InvalidRequest")
    missing = PIPELINE + "/views/totals/connectors/nope/reset"
    assert api.client.post(missing, query_string={"dry_run": "true"}).status_code == 404


# -- phases, rate, eta ----------------------------------------------------------------------


def test_a_completed_reset_lists_its_phases_in_order(streaming: Api, run_resets: Any) -> None:
    token = streaming.reset()
    queued = streaming.status(token).get_json()
    assert queued["phases"] == [] and queued["eta_seconds"] is None
    assert run_resets() == 1
    status = streaming.status(token).get_json()
    names = [phase["name"] for phase in status["phases"]]
    assert names == ["queued", "resetting_sink", "replaying_snapshot", "done"]
    starts = [phase["started_at"] for phase in status["phases"]]
    ends = [phase["ended_at"] for phase in status["phases"]]
    assert starts == sorted(starts) and all(ends)
    assert all(end >= start for start, end in zip(starts, ends, strict=True))
    assert status["rate_records_per_second"] is None  # nothing replays any more


def test_rate_and_eta_come_from_the_replay_sample() -> None:
    import datetime as dt

    from app.database import utcnow

    ago = utcnow() - dt.timedelta(seconds=4)
    rate, eta = reset_service._rate_and_eta("inprogress", "replaying_snapshot", 1000, 600, ago, 200)
    assert rate == pytest.approx(100, rel=0.05)
    assert eta == pytest.approx(4, rel=0.05)
    # A sample too fresh or too old, another phase, or a stalled replay says nothing.
    assert reset_service._rate_and_eta(
        "inprogress", "replaying_snapshot", 1000, 600, utcnow(), 600
    ) == (None, None)
    old = utcnow() - dt.timedelta(minutes=5)
    assert reset_service._rate_and_eta("inprogress", "replaying_snapshot", 1000, 600, old, 0) == (
        None,
        None,
    )
    assert reset_service._rate_and_eta("complete", "done", 10, 10, ago, 0) == (None, None)
    assert reset_service._rate_and_eta("inprogress", "replaying_snapshot", 1000, 600, ago, 600) == (
        0.0,
        None,
    )


def test_progress_mid_replay_shows_the_replay_phase_open(streaming: Api, app: Flask) -> None:
    token = streaming.reset()
    seen = []
    step = lambda: seen.append(streaming.status(token).get_json())  # noqa: E731
    run_resets_stepping_in(app, step, after_batches=2)  # one batch recorded
    mid = seen[0]
    assert mid["phase"] == "replaying_snapshot"
    assert mid["phases"][-1]["name"] == "replaying_snapshot"
    assert mid["phases"][-1]["ended_at"] is None
    assert 0 < mid["replayed_records"] < mid["snapshot_records"] == 10
