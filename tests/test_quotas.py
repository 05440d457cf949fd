"""Per-tenant quotas: pipelines, connectors and queued resets, each a setting.

Past a quota the request answers 409 ``QuotaExceeded`` naming it, and nothing
is created; other tenants are not affected; 0 lifts a quota.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, assert_error


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Small quotas."""
    return {
        **app_config,
        "TENANT_MAX_PIPELINES": 2,
        "TENANT_MAX_CONNECTORS": 3,
        "TENANT_MAX_QUEUED_RESETS": 2,
    }


def test_a_tenant_creates_pipelines_up_to_its_quota(api, client, other_tenant_headers):
    api.create_pipeline("a")
    api.create_pipeline("b")
    r = client.post("/v0/pipelines", json={"name": "c", "views": ["v"]})
    body = assert_error(r, 409, "QuotaExceeded")
    assert body["details"] == {"quota": "pipelines", "limit": 2, "current": 2}
    assert "TENANT_MAX_PIPELINES" in body["message"]
    assert client.get("/v0/pipelines/c").status_code == 404
    # Another tenant has a quota of its own.
    other = client.post("/v0/pipelines", json={"name": "c"}, headers=other_tenant_headers)
    assert other.status_code == 201
    # Deleting one makes room.
    assert client.delete("/v0/pipelines/a").status_code == 204
    api.create_pipeline("c")


def test_a_tenant_adds_connectors_up_to_its_quota(api, client):
    api.create_pipeline("a", views=("v", "w"))
    for name in ("s1", "s2", "s3"):
        api.add_file_connector("a", "v", name, f"{name}.jsonl")
    r = client.post(
        "/v0/pipelines/a/views/w/connectors",
        json={"name": "s4", "transport": {"name": "file", "config": {"path": "s4.jsonl"}}},
    )
    body = assert_error(r, 409, "QuotaExceeded")
    assert body["details"]["quota"] == "connectors"
    assert client.get("/v0/pipelines/a/views/w/connectors").get_json() == []


def test_a_tenant_queues_resets_up_to_its_quota_and_is_told_when_to_retry(api, client, run_resets):
    api.create_pipeline("a")
    for name in ("s1", "s2", "s3"):
        api.add_file_connector("a", "totals", name, f"{name}.jsonl")
    api.action("a", "start")
    api.reset("a", connector="s1")
    api.reset("a", connector="s2")
    again = api.reset("a", connector="s2")  # the one queued is answered again
    assert again
    r = client.post("/v0/pipelines/a/views/totals/connectors/s3/reset")
    body = assert_error(r, 409, "QuotaExceeded")
    assert body["details"] == {"quota": "queued_resets", "limit": 2, "current": 2}
    assert r.headers["Retry-After"]
    # Once the queued ones start, there is room again.
    assert run_resets() == 2
    api.reset("a", connector="s3")


def test_a_quota_of_0_is_no_quota(app, client):
    app.config["TENANT_MAX_PIPELINES"] = 0
    api = Api(client)
    for name in ("a", "b", "c"):
        api.create_pipeline(name)
