"""A connector's reset history: ``GET .../connectors/{c}/resets`` and ``flask resets list``."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from app.extensions import db
from app.resets.executor import ResetExecutor
from tests.conftest import Api, assert_error

HISTORY = "/v0/pipelines/orders/views/totals/connectors/sink1/resets"


def _run_resets(app: Flask) -> None:
    with app.app_context():
        ResetExecutor().run_pending()
        db.session.remove()


def _make_history(api: Api, app: Flask, count: int) -> list[str]:
    """Issue and complete ``count`` resets; return their ids, oldest first."""
    ids = []
    for _ in range(count):
        token = api.reset()
        _run_resets(app)
        body = api.status(token).get_json()
        assert body["status"] == "complete", body
        ids.append(body["reset_id"])
    return ids


def test_history_lists_every_reset_newest_first_without_tokens(
    running_pipeline: Api, app: Flask
) -> None:
    ids = _make_history(running_pipeline, app, 3)
    # One more, cut short by a restart: listed as abandoned.
    running_pipeline.reset()
    running_pipeline.action("orders", "restart")
    r = running_pipeline.client.get(HISTORY)
    assert r.status_code == 200, r.get_json()
    items = r.get_json()
    assert [item["status"] for item in items] == ["abandoned", "complete", "complete", "complete"]
    assert [item["reset_id"] for item in items[1:]] == list(reversed(ids))
    for item in items:
        assert "token" not in item and "status_url" not in item
        assert (item["pipeline_name"], item["view_name"], item["connector_name"]) == (
            "orders",
            "totals",
            "sink1",
        )
    assert items[0]["incarnation"] == 1 and items[0]["completed_at"] is not None


def test_history_comes_in_pages(running_pipeline: Api, app: Flask) -> None:
    ids = list(reversed(_make_history(running_pipeline, app, 5)))
    seen, url = [], f"{HISTORY}?limit=2"
    while url:
        r = running_pipeline.client.get(url)
        assert r.status_code == 200, r.get_json()
        seen += [item["reset_id"] for item in r.get_json()]
        link = r.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
    assert seen == ids


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("/v0/pipelines/ghost/views/totals/connectors/sink1/resets", 404, "UnknownPipelineName"),
        ("/v0/pipelines/orders/views/ghost/connectors/sink1/resets", 404, "UnknownView"),
        ("/v0/pipelines/orders/views/totals/connectors/ghost/resets", 404, "UnknownConnector"),
        (f"{HISTORY}?limit=0", 400, "InvalidRequest"),
        (f"{HISTORY}?after=not-a-uuid", 400, "InvalidRequest"),
    ],
)
def test_history_errors(running_pipeline: Api, url: str, status: int, code: str) -> None:
    assert_error(running_pipeline.client.get(url), status, code)


def test_history_of_another_tenant_is_404(running_pipeline: Api, app: Flask, make_key) -> None:
    other = app.test_client()
    r = other.get(HISTORY, headers=make_key("other", "read"))
    assert_error(r, 404, "UnknownPipelineName")


def test_cli_lists_the_history(running_pipeline: Api, app: Flask) -> None:
    ids = _make_history(running_pipeline, app, 2)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["resets", "list", "orders", "totals", "sink1", "--json"])
    assert result.exit_code == 0, result.output
    assert [item["reset_id"] for item in json.loads(result.output)] == list(reversed(ids))
    result = runner.invoke(args=["resets", "list", "orders", "totals", "sink1", "--limit", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["RESET_ID", "STATUS", "PHASE"]
    assert len(lines) == 2 and lines[1].startswith(ids[-1]) and "complete" in lines[1]
