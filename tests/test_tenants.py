"""Tenant isolation: another tenant's things answer exactly like things that do not exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.conftest import Api, assert_error


@pytest.fixture
def other(app, other_tenant_headers) -> Api:
    """Setup helpers for a writer of tenant "other"."""
    client = app.test_client()
    for name, value in other_tenant_headers.items():
        client.environ_base["HTTP_" + name.upper().replace("-", "_")] = value
    return Api(client)


@pytest.fixture
def twins(running_pipeline: Api, other: Api) -> tuple[Api, Api]:
    """Both tenants run a pipeline 'orders' with view 'totals'; connectors differ."""
    other.create_pipeline()
    other.add_file_connector(name="sink-o", path="other/totals.jsonl")
    other.action("orders", "start")
    return running_pipeline, other


def _comparable(response) -> tuple[int, dict, dict]:
    """A response without what differs between any two requests (the request id)."""
    headers = {k: v for k, v in response.headers.items() if k != "X-Request-Id"}
    return response.status_code, headers, response.get_json()


def test_each_tenant_lists_only_its_own_pipelines(twins):
    mine, other = twins
    mine.create_pipeline("mine-only")
    mine_list = mine.client.get("/v0/pipelines").get_json()
    other_list = other.client.get("/v0/pipelines").get_json()
    assert [p["name"] for p in mine_list] == ["mine-only", "orders"]
    assert [p["name"] for p in other_list] == ["orders"]
    mine_id = mine.client.get("/v0/pipelines/orders").get_json()["id"]
    other_id = other.client.get("/v0/pipelines/orders").get_json()["id"]
    assert mine_id != other_id == other_list[0]["id"]


def _pipeline_routes(app) -> list[tuple[str, str]]:
    """(method, rule) of every API route that names a pipeline (the console's: test_console.py)."""
    return [
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if "<pipeline_name>" in rule.rule and rule.rule.startswith("/v0/")
        for method in sorted(rule.methods - {"OPTIONS", "HEAD"})
    ]


def _path(rule: str, pipeline: str) -> str:
    return (
        rule.replace("<pipeline_name>", pipeline)
        .replace("<view_name>", "totals")
        .replace("<connector_name>", "sink1")
    )


def test_another_tenant_s_pipeline_answers_like_an_unknown_one(app, running_pipeline, other):
    routes = _pipeline_routes(app)
    assert len(routes) >= 15
    for method, rule in routes:
        hidden = other.client.open(_path(rule, "orders"), method=method, json={})
        unknown = other.client.open(_path(rule, "absent"), method=method, json={})
        h_status, h_headers, h_body = _comparable(hidden)
        u_status, u_headers, u_body = _comparable(unknown)
        assert (h_status, h_headers) == (u_status, u_headers), (method, rule)
        assert json_with(h_body, "orders", "absent") == u_body, (method, rule)
        assert h_status in (400, 404), (method, rule, h_body)
    # Nothing the other tenant tried changed the pipeline.
    pipeline = running_pipeline.client.get("/v0/pipelines/orders").get_json()
    assert pipeline["status"] == "running" and pipeline["views"] == ["totals"]


def json_with(body, old: str, new: str):
    """The body with every string ``old`` replaced by ``new``."""
    if isinstance(body, dict):
        return {k: json_with(v, old, new) for k, v in body.items()}
    if isinstance(body, list):
        return [json_with(v, old, new) for v in body]
    return body.replace(old, new) if isinstance(body, str) else body


def test_each_tenant_sees_only_its_own_connectors(twins):
    mine, other = twins
    base = "/v0/pipelines/orders/views/totals/connectors"
    assert [c["name"] for c in mine.client.get(base).get_json()] == ["sink1"]
    assert [c["name"] for c in other.client.get(base).get_json()] == ["sink-o"]
    assert_error(other.client.get(f"{base}/sink1"), 404, "UnknownConnector")
    assert_error(mine.client.get(f"{base}/sink-o"), 404, "UnknownConnector")
    assert_error(other.client.post(f"{base}/sink1/reset"), 404, "UnknownConnector")


def test_resets_and_tokens_stay_in_their_tenant(twins, run_resets, tmp_path):
    mine, other = twins
    mine_token = mine.reset()
    other_token = other.reset(connector="sink-o")
    # A token of one tenant's "orders" means nothing to the other's "orders".
    body = assert_error(other.status(mine_token), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "wrong_pipeline"
    body = assert_error(mine.status(other_token), 400, "InvalidResetToken")
    assert body["details"]["reason"] == "wrong_pipeline"
    # ... and it is as unknown as any pipeline on a name only the other tenant has.
    mine.create_pipeline("mine-only")
    assert_error(other.status(mine_token, "mine-only"), 404, "UnknownPipelineName")
    assert run_resets() == 2
    assert mine.status(mine_token).get_json()["connector_name"] == "sink1"
    assert other.status(other_token).get_json()["connector_name"] == "sink-o"
    # Each tenant's sink files live in the tenant's own folder.
    assert (tmp_path / "sinks" / "default" / "out" / "totals.jsonl").exists()
    assert (tmp_path / "sinks" / "other" / "other" / "totals.jsonl").exists()


def test_same_named_pipelines_live_independent_lives(twins):
    mine, other = twins
    other.action("orders", "stop")
    assert mine.client.get("/v0/pipelines/orders").get_json()["status"] == "running"
    assert other.client.delete("/v0/pipelines/orders").status_code == 204
    assert mine.client.get("/v0/pipelines/orders").status_code == 200
    assert_error(other.client.get("/v0/pipelines/orders"), 404, "UnknownPipelineName")


def test_api_keys_are_per_tenant(client: FlaskClient, other: Api, anon_client, auth_headers):
    mine = {k["name"] for k in client.get("/v0/api_keys").get_json()}
    theirs = {k["name"] for k in other.client.get("/v0/api_keys").get_json()}
    assert mine and theirs and not mine & theirs
    name = next(iter(mine))
    assert_error(other.client.get(f"/v0/api_keys/{name}"), 404, "UnknownApiKey")
    assert_error(other.client.delete(f"/v0/api_keys/{name}"), 404, "UnknownApiKey")
    assert anon_client.get("/v0/pipelines", headers=auth_headers).status_code == 200


def test_a_tenant_cannot_reach_another_tenant_s_sink_file(running_pipeline, other, run_resets):
    sink_dir = Path(running_pipeline.client.application.config["SINK_DIR"])
    mine_file = sink_dir / "default" / "out" / "totals.jsonl"
    mine_file.parent.mkdir(parents=True, exist_ok=True)
    mine_file.write_text('{"insert":{"n":1}}\n')
    other.create_pipeline()
    other.add_file_connector(name="sneaky", path="out/totals.jsonl")
    other.action("orders", "start")
    other.reset(connector="sneaky")
    run_resets()
    assert mine_file.read_text() == '{"insert":{"n":1}}\n'
