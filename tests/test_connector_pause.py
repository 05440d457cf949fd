"""Pausing and starting one output connector: it keeps its place, or skips on request."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from app.delivery import leases
from app.extensions import db
from tests.conftest import Api, assert_error
from tests.test_delivery import deliver, fold, inserts, push, sink_lines, stats

BASE = "/v0/pipelines/orders/views/totals/connectors/sink1"


def test_a_paused_connector_delivers_nothing_then_resumes_where_it_stopped(
    running_pipeline: Api, client, app: Flask, tmp_path: Path
) -> None:
    push(client, inserts(0, 3))
    deliver(app)
    r = client.post(f"{BASE}/pause")
    assert r.status_code == 200 and r.get_json()["paused"] is True
    push(client, inserts(3, 4))
    assert deliver(app) == 0  # nothing is claimed while paused
    assert len(sink_lines(tmp_path)) == 3
    body = stats(client)
    assert body["health"] == "paused" and body["paused"] is True
    assert body["queued_records"] == 4
    r = client.post(f"{BASE}/start")
    assert r.status_code == 200 and r.get_json()["paused"] is False
    deliver(app)
    # Nothing produced while paused was lost: the sink is the view.
    assert fold(sink_lines(tmp_path)) == fold(inserts(0, 7))
    assert stats(client)["health"] == "healthy"


def test_start_with_skip_begins_at_the_log_end(
    running_pipeline: Api, client, app: Flask, tmp_path: Path
) -> None:
    push(client, inserts(0, 2))
    deliver(app)
    client.post(f"{BASE}/pause")
    push(client, inserts(2, 5))  # produced while paused: skipped
    r = client.post(f"{BASE}/start", json={"skip": True})
    assert r.status_code == 200, r.get_json()
    assert stats(client)["delivered_seq"] == 7
    push(client, inserts(7, 1))
    deliver(app)
    assert fold(sink_lines(tmp_path)) == fold(inserts(0, 2) + inserts(7, 1))
    # A reset brings the sink back in line with the view.
    running_pipeline.reset()
    with app.app_context():
        from app.resets.executor import ResetExecutor

        ResetExecutor().run_pending()
        db.session.remove()
    assert fold(sink_lines(tmp_path)) == fold(inserts(0, 8))


def test_skip_waits_for_a_worker_finishing_a_batch(
    running_pipeline: Api, client, app: Flask
) -> None:
    push(client, inserts(0, 2))
    client.post(f"{BASE}/pause")
    with app.app_context():
        held = leases.take(1, "busy-worker", 30)
        db.session.commit()
        assert held is not None
        db.session.remove()
    busy = client.post(f"{BASE}/start", json={"skip": True})
    body = assert_error(busy, 409, "IllegalConnectorAction")
    assert body["details"]["reason"] == "busy"
    assert busy.headers["Retry-After"] == str(app.config["RETRY_AFTER_SECONDS"])
    assert stats(client)["paused"] is True  # nothing moved
    # Without skip, starting needs no lease: the worker's batch goes on.
    assert client.post(f"{BASE}/start").status_code == 200


def test_skip_is_refused_while_the_sink_owes_a_snapshot(
    running_pipeline: Api, client, app: Flask
) -> None:
    from app.resets.executor import ResetExecutor

    client.post(f"{BASE}/pause")
    running_pipeline.reset()
    with app.app_context():
        assert ResetExecutor().claim() is not None  # under way: the connector is resetting
        db.session.remove()
    r = client.post(f"{BASE}/start", json={"skip": True})
    assert assert_error(r, 409, "IllegalConnectorAction")["details"]["reason"] == "not_in_sync"


def test_pause_and_start_are_idempotent_and_need_write(
    running_pipeline: Api, client, app: Flask, make_key
) -> None:
    for _ in range(2):
        assert client.post(f"{BASE}/pause").get_json()["paused"] is True
    for _ in range(2):
        assert client.post(f"{BASE}/start").get_json()["paused"] is False
    reader = app.test_client()
    headers = make_key("default", "read")
    assert_error(reader.post(f"{BASE}/pause", headers=headers), 403, "InsufficientPermissions")
    for wrong in ("maybe", 1, 0):
        r = client.post(f"{BASE}/start", json={"skip": wrong})
        assert_error(r, 400, "InvalidRequest")
    assert_error(client.post(f"{BASE}/start", json={"sikp": True}), 400, "InvalidRequest")


@pytest.mark.parametrize("action", ["pause", "start"])
def test_unknown_connector_is_404(running_pipeline: Api, client, action: str) -> None:
    r = client.post(f"/v0/pipelines/orders/views/totals/connectors/ghost/{action}")
    assert_error(r, 404, "UnknownConnector")


def test_cli_pauses_and_starts(running_pipeline: Api, client, app: Flask) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["connectors", "pause", "orders", "totals", "sink1"])
    assert result.exit_code == 0 and "Paused connector 'sink1'" in result.output
    assert stats(client)["paused"] is True
    result = runner.invoke(args=["connectors", "start", "orders", "totals", "sink1", "--skip"])
    assert result.exit_code == 0, result.output
    assert "Started connector 'sink1' of orders/totals at change 0" in result.output
    assert stats(client)["paused"] is False
