"""POST .../connectors/{connector_name}/reset: issuing output connector resets."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask

from app.extensions import db
from app.resets import service as reset_service
from app.resets.executor import ResetExecutor
from app.resets.models import Reset
from tests.conftest import Api, assert_error

RESET_URL = "/v0/pipelines/orders/views/totals/connectors/sink1/reset"


def count_resets(app: Flask) -> int:
    """Return how many resets the database holds."""
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(Reset))


def test_reset_answers_202_with_token_and_location_of_its_status(running_pipeline: Api) -> None:
    r = running_pipeline.client.post(RESET_URL)
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    token = body["token"]
    location = urlsplit(r.headers["Location"])
    assert location.path == "/v0/pipelines/orders/reset_status"
    assert parse_qs(location.query) == {"token": [token]}
    assert body["status_url"] == r.headers["Location"]
    assert (body["status"], body["phase"]) == ("inprogress", "queued")
    assert r.headers["Cache-Control"] == "no-store"
    # The Location answers as the contract says.
    status = running_pipeline.client.get(r.headers["Location"])
    assert status.status_code == 200
    assert status.get_json()["reset_id"] == body["reset_id"]


@pytest.mark.parametrize("started", [False, True], ids=["never-started", "stopped-again"])
def test_reset_of_a_stopped_pipeline_is_503(api: Api, app: Flask, started: bool) -> None:
    api.create_pipeline()
    api.add_file_connector()
    if started:
        api.action("orders", "start")
        api.action("orders", "stop")
    body = assert_error(api.client.post(RESET_URL), 503, "PipelineNotRunning")
    assert body["details"]["pipeline_name"] == "orders"
    assert count_resets(app) == 0


def test_reset_of_a_paused_pipeline_is_queued(running_pipeline: Api) -> None:
    running_pipeline.action("orders", "pause")
    assert running_pipeline.client.post(RESET_URL).status_code == 202


def test_reset_requested_while_one_is_queued_returns_the_same_token(
    running_pipeline: Api, app: Flask
) -> None:
    first = running_pipeline.client.post(RESET_URL).get_json()
    second = running_pipeline.client.post(RESET_URL).get_json()
    assert second["token"] == first["token"]
    assert second["reset_id"] == first["reset_id"]
    assert count_resets(app) == 1


def test_reset_requested_while_the_first_runs_is_answered_with_the_first(
    running_pipeline: Api, app: Flask
) -> None:
    """A second request follows the job under way rather than queueing another snapshot."""
    first = running_pipeline.reset()
    with app.app_context():
        assert ResetExecutor(owner="busy-worker").claim() is not None  # started, not done
        db.session.remove()
    assert running_pipeline.status(first).get_json()["phase"] == "resetting_sink"
    assert running_pipeline.reset() == first
    assert count_resets(app) == 1


def test_reset_requested_after_the_first_completed_gets_a_new_token(
    running_pipeline: Api, run_resets: Any
) -> None:
    first = running_pipeline.reset()
    assert run_resets() == 1
    second = running_pipeline.reset()
    assert second != first
    assert running_pipeline.status(first).get_json()["status"] == "complete"
    assert running_pipeline.status(second).get_json()["status"] == "inprogress"


def test_resets_of_different_connectors_are_separate(running_pipeline: Api) -> None:
    running_pipeline.action("orders", "stop")
    running_pipeline.add_file_connector(name="sink2", path="two.jsonl")
    running_pipeline.action("orders", "start")
    assert running_pipeline.reset(connector="sink1") != running_pipeline.reset(connector="sink2")


def test_concurrent_duplicate_request_answers_with_the_winners_reset(
    running_pipeline: Api, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests both see no queued reset; the loser's insert must not be a 500."""
    first = running_pipeline.reset()
    real = reset_service._queued_reset
    calls: list[int] = []

    def blind_once(connector_id: int) -> Reset | None:
        calls.append(connector_id)
        return None if len(calls) == 1 else real(connector_id)

    monkeypatch.setattr(reset_service, "_queued_reset", blind_once)
    r = running_pipeline.client.post(RESET_URL)
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["token"] == first
    assert count_resets(app) == 1


@pytest.mark.parametrize(
    ("url", "error_code", "details"),
    [
        (
            "/v0/pipelines/ghost/views/totals/connectors/sink1/reset",
            "UnknownPipelineName",
            {"pipeline_name": "ghost"},
        ),
        (
            "/v0/pipelines/orders/views/nope/connectors/sink1/reset",
            "UnknownView",
            {"pipeline_name": "orders", "view_name": "nope"},
        ),
        (
            "/v0/pipelines/orders/views/totals/connectors/nope/reset",
            "UnknownConnector",
            {"pipeline_name": "orders", "view_name": "totals", "connector_name": "nope"},
        ),
    ],
    ids=["pipeline", "view", "connector"],
)
def test_reset_of_something_unknown_is_404(
    running_pipeline: Api, app: Flask, url: str, error_code: str, details: dict[str, str]
) -> None:
    body = assert_error(running_pipeline.client.post(url), 404, error_code)
    assert body["details"] == details
    assert count_resets(app) == 0


def test_reset_needs_post(running_pipeline: Api) -> None:
    r = running_pipeline.client.get(RESET_URL)
    assert_error(r, 405, "MethodNotAllowed")
    assert "POST" in r.headers["Allow"]


def test_queued_reset_of_an_ended_incarnation_is_abandoned_not_reused(
    running_pipeline: Api, app: Flask, run_resets: Any
) -> None:
    old = running_pipeline.reset()
    running_pipeline.action("orders", "stop")
    running_pipeline.action("orders", "start")
    new = running_pipeline.reset()
    assert new != old
    assert running_pipeline.status(new).get_json()["incarnation"] == 2
    assert run_resets() == 1  # only the new one runs
    assert running_pipeline.status(new).get_json()["status"] == "complete"
    assert_error(running_pipeline.status(old), 410, "PipelineRestarted")
