"""Output connectors: adding, listing, showing and removing them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, assert_error

CONNECTORS = "/v0/pipelines/orders/views/totals/connectors"


def file_connector(name: str = "sink1", path: str = "out/totals.jsonl") -> dict[str, Any]:
    """Body of a request adding a file connector."""
    return {"name": name, "transport": {"name": "file", "config": {"path": path}}}


@pytest.fixture
def orders(api: Api) -> Api:
    """A stopped pipeline 'orders' with views 'totals' and 'by_day'."""
    api.create_pipeline(views=("totals", "by_day"))
    return api


def test_add_answers_201_with_the_connector_and_its_location(orders: Api) -> None:
    r = orders.client.post(CONNECTORS, json=file_connector())
    assert r.status_code == 201, r.get_json()
    assert r.headers["Location"].endswith(f"{CONNECTORS}/sink1")
    body = r.get_json()
    assert body["name"] == "sink1"
    assert body["pipeline_name"] == "orders" and body["view_name"] == "totals"
    assert body["transport"] == {"name": "file", "config": {"path": "out/totals.jsonl"}}
    assert dt.datetime.fromisoformat(body["created_at"]).tzinfo is not None
    assert orders.client.get(r.headers["Location"]).get_json() == body


def test_add_http_connector(orders: Api) -> None:
    r = orders.client.post(
        CONNECTORS,
        json={
            "name": "hook",
            "transport": {"name": "http", "config": {"url": "http://127.0.0.1:9/in"}},
        },
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["transport"]["config"]["url"] == "http://127.0.0.1:9/in"


def test_list_shows_the_views_connectors_by_name(orders: Api) -> None:
    for name in ("zz", "aa"):
        orders.add_file_connector(name=name, path=f"{name}.jsonl")
    orders.add_file_connector(view="by_day", name="other", path="other.jsonl")
    r = orders.client.get(CONNECTORS)
    assert r.status_code == 200
    assert [c["name"] for c in r.get_json()] == ["aa", "zz"]


def test_connector_names_are_unique_per_view(orders: Api) -> None:
    orders.add_file_connector()
    body = assert_error(
        orders.client.post(CONNECTORS, json=file_connector(path="other.jsonl")),
        409,
        "DuplicateName",
    )
    assert body["details"] == {
        "pipeline_name": "orders",
        "view_name": "totals",
        "connector_name": "sink1",
    }
    # The same name on another view is fine.
    orders.add_file_connector(view="by_day", path="by_day.jsonl")


@pytest.mark.parametrize(
    "second", ["out/totals.jsonl", "./out/totals.jsonl", "out/../out/totals.jsonl", "link.jsonl"]
)
def test_two_connectors_cannot_write_one_file(orders: Api, app, second: str) -> None:
    orders.add_file_connector(path="out/totals.jsonl")
    folder = Path(app.config["SINK_DIR"]) / "default"
    (folder / "out").mkdir(parents=True, exist_ok=True)
    (folder / "link.jsonl").symlink_to(folder / "out" / "totals.jsonl")
    body = assert_error(
        orders.client.post(CONNECTORS, json=file_connector(name="sink2", path=second)),
        409,
        "SinkInUse",
    )
    assert body["details"] == {"pipeline_name": "orders", "transport.config.path": second}
    assert str(folder) not in body["message"]
    # A connector removed frees its file.
    assert orders.client.delete(f"{CONNECTORS}/sink1").status_code == 204
    orders.add_file_connector(name="sink2", path=second)


def test_one_file_name_in_two_tenants_is_two_files(orders: Api, other_tenant_headers) -> None:
    orders.add_file_connector(path="shared.jsonl")
    other = orders.client.application.test_client()
    created = other.post(
        "/v0/pipelines", json={"name": "orders", "views": ["totals"]}, headers=other_tenant_headers
    )
    assert created.status_code == 201
    r = other.post(
        CONNECTORS, json=file_connector(path="shared.jsonl"), headers=other_tenant_headers
    )
    assert r.status_code == 201, r.get_json()


def test_remove_connector(orders: Api) -> None:
    orders.add_file_connector()
    assert orders.client.delete(f"{CONNECTORS}/sink1").status_code == 204
    assert_error(orders.client.get(f"{CONNECTORS}/sink1"), 404, "UnknownConnector")
    assert orders.client.get(CONNECTORS).get_json() == []


@pytest.mark.parametrize(
    ("method", "url", "error_code"),
    [
        ("get", "/v0/pipelines/ghost/views/totals/connectors", "UnknownPipelineName"),
        ("get", "/v0/pipelines/orders/views/nope/connectors", "UnknownView"),
        ("post", "/v0/pipelines/orders/views/nope/connectors", "UnknownView"),
        ("get", f"{CONNECTORS}/nope", "UnknownConnector"),
        ("delete", f"{CONNECTORS}/nope", "UnknownConnector"),
        ("delete", "/v0/pipelines/orders/views/nope/connectors/sink1", "UnknownView"),
    ],
)
def test_unknown_pipeline_view_or_connector_is_404(
    orders: Api, method: str, url: str, error_code: str
) -> None:
    r = getattr(orders.client, method)(url, json=file_connector() if method == "post" else None)
    assert_error(r, 404, error_code)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"transport": {"name": "file", "config": {"path": "a"}}}, "name"),
        ({"name": "bad name", "transport": {"name": "file", "config": {"path": "a"}}}, "name"),
        ({"name": "s"}, "transport"),
        ({"name": "s", "transport": {"name": "kafka", "config": {}}}, "transport"),
        ({"name": "s", "transport": {"name": "file", "config": {}}}, "transport.config.path"),
        (
            {"name": "s", "transport": {"name": "file", "config": {"path": 7}}},
            "transport.config.path",
        ),
        (
            {"name": "s", "transport": {"name": "file", "config": {"path": "a", "mode": "x"}}},
            "transport.config",
        ),
        (
            {"name": "s", "transport": {"name": "http", "config": {"url": "ftp://x"}}},
            "transport.config.url",
        ),
        ({"name": "s", "transport": {"name": "file", "config": {"path": "a"}}, "x": 1}, "x"),
    ],
    ids=[
        "no-name",
        "bad-name",
        "no-transport",
        "unknown-transport",
        "file-without-path",
        "path-not-string",
        "unknown-setting",
        "http-bad-url",
        "unknown-field",
    ],
)
def test_invalid_connector_is_400_naming_the_field(
    orders: Api, body: dict[str, Any], field: str
) -> None:
    error = assert_error(orders.client.post(CONNECTORS, json=body), 400, "InvalidRequest")
    assert field in error["details"], error
    assert orders.client.get(CONNECTORS).get_json() == []


def test_connectors_of_a_deleted_view_are_gone(orders: Api) -> None:
    orders.add_file_connector()
    assert orders.client.delete("/v0/pipelines/orders/views/totals").status_code == 204
    assert_error(orders.client.get(CONNECTORS), 404, "UnknownView")


def test_a_postgres_connector_names_only_sink_variables_and_shows_no_dsn(api, monkeypatch):
    """The DSN stays in the server's environment; a tenant cannot name any other variable."""
    monkeypatch.setenv("SINK_DSN_WAREHOUSE", "postgresql://u:secret@db.invalid/warehouse")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@db.invalid/service")
    api.create_pipeline()
    url = "/v0/pipelines/orders/views/totals/connectors"
    for dsn_env in ("DATABASE_URL", "SINK_DSN_MISSING", "SINK_DSN_"):
        body = {
            "name": "warehouse",
            "transport": {"name": "postgres", "config": {"dsn_env": dsn_env, "table": "t"}},
        }
        answer = assert_error(api.client.post(url, json=body), 400, "InvalidRequest")
        assert "transport.config.dsn_env" in answer["details"], answer
        assert "secret" not in json.dumps(answer)
    config = {"dsn_env": "SINK_DSN_WAREHOUSE", "table": "analytics.totals", "key": ["id"]}
    created = api.client.post(
        url, json={"name": "warehouse", "transport": {"name": "postgres", "config": config}}
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["transport"] == {
        "name": "postgres",
        "config": {**config, "mode": "rows"},
    }
    assert "secret" not in created.get_data(as_text=True)
    # One connector per table.
    again = api.client.post(
        url, json={"name": "twin", "transport": {"name": "postgres", "config": config}}
    )
    assert_error(again, 409, "SinkInUse")


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        # Other users, passwords and options; the loopback names; libpq's defaults.
        ("postgresql://a:x@db.example/wh", "host=DB.example port=5432 dbname=wh user=b", True),
        ("postgresql://a@localhost/wh", "postgresql://b@127.0.0.1:5432/wh?sslmode=disable", True),
        ("postgresql://wh@db.example", "postgresql://other@db.example/wh", True),
        ("postgresql://a@db.example/wh", "postgresql://a@db.example:5433/wh", False),
        ("postgresql://a@db.example/wh", "postgresql://a@db.example/lake", False),
    ],
)
def test_two_variables_naming_one_database_are_one_sink(api, monkeypatch, first, second, same):
    """One connector per table, whichever variable names the table's database."""
    monkeypatch.setenv("SINK_DSN_ONE", first)
    monkeypatch.setenv("SINK_DSN_TWO", second)
    api.create_pipeline()
    url = "/v0/pipelines/orders/views/totals/connectors"
    answers = [
        api.client.post(
            url,
            json={
                "name": f"c{n}",
                "transport": {"name": "postgres", "config": {"dsn_env": var, "table": "a.t"}},
            },
        )
        for n, var in enumerate(("SINK_DSN_ONE", "SINK_DSN_TWO"))
    ]
    assert answers[0].status_code == 201
    if same:
        error = assert_error(answers[1], 409, "SinkInUse")
        assert error["details"] == {"pipeline_name": "orders", "transport.config.table": "a.t"}
        assert "x@" not in json.dumps(error) and "db.example" not in json.dumps(error)
    else:
        assert answers[1].status_code == 201


def test_a_variable_that_holds_no_dsn_is_refused_without_showing_it(api, monkeypatch):
    monkeypatch.setenv("SINK_DSN_BAD", "host=db.example password='secret")
    api.create_pipeline()
    config = {"dsn_env": "SINK_DSN_BAD", "table": "t"}
    answer = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "w", "transport": {"name": "postgres", "config": config}},
    )
    error = assert_error(answer, 400, "InvalidRequest")
    assert error["details"]["transport.config.dsn_env"] == [
        "The variable SINK_DSN_BAD does not hold a valid DSN."
    ]
    assert "secret" not in answer.get_data(as_text=True)


def test_dsn_variables_granted_to_tenants_are_named_by_those_tenants_only(
    app, api, make_key, monkeypatch
):
    """``POSTGRES_SINK_DSN_TENANTS``: a tenant names only its variables, and learns no others."""
    monkeypatch.setenv("SINK_DSN_DEFAULT", "postgresql://u:secret@db.invalid/default")
    monkeypatch.setenv("SINK_DSN_OTHER", "postgresql://u:secret@db.invalid/other")
    monkeypatch.setenv("SINK_DSN_SHARED", "postgresql://u:secret@db.invalid/shared")
    monkeypatch.setitem(
        app.config,
        "POSTGRES_SINK_DSN_TENANTS",
        {"SINK_DSN_DEFAULT": ["default"], "SINK_DSN_OTHER": "other", "SINK_DSN_SHARED": "*"},
    )
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = make_key("other", "admin")["Authorization"]
    api.create_pipeline()
    Api(other).create_pipeline()
    url = "/v0/pipelines/orders/views/totals/connectors"

    def add(client, name: str, dsn_env: str, table: str):
        config = {"dsn_env": dsn_env, "table": table}
        return client.post(
            url, json={"name": name, "transport": {"name": "postgres", "config": config}}
        )

    # Another tenant's variable, an unlisted one (set or not): the same refusal.
    refusals = [
        ("SINK_DSN_OTHER", add(api.client, "a", "SINK_DSN_OTHER", "t1")),
        ("SINK_DSN_DEFAULT", add(other, "b", "SINK_DSN_DEFAULT", "t2")),
        ("SINK_DSN_UNLISTED", add(api.client, "c", "SINK_DSN_UNLISTED", "t3")),
    ]
    monkeypatch.setenv("SINK_DSN_UNLISTED", "postgresql://u:secret@db.invalid/unlisted")
    refusals.append(("SINK_DSN_UNLISTED", add(api.client, "d", "SINK_DSN_UNLISTED", "t4")))
    for dsn_env, answer in refusals:
        error = assert_error(answer, 400, "InvalidRequest")
        assert error["details"]["transport.config.dsn_env"] == [
            f"The variable {dsn_env} is not granted to this tenant."
        ], error
    assert add(api.client, "mine", "SINK_DSN_DEFAULT", "t5").status_code == 201
    assert add(other, "mine", "SINK_DSN_OTHER", "t6").status_code == 201
    assert add(api.client, "shared", "SINK_DSN_SHARED", "t7").status_code == 201
    assert add(other, "shared", "SINK_DSN_SHARED", "t8").status_code == 201


@pytest.mark.parametrize(
    "grants",
    [["SINK_DSN_A"], {"SINK_DSN_A": 3}, {"SINK_DSN_A": ["acme", 4]}, "SINK_DSN_A"],
)
def test_a_malformed_grant_table_stops_the_app_from_being_built(app_config, grants):
    from app import create_app

    with pytest.raises(ValueError, match="POSTGRES_SINK_DSN_TENANTS"):
        create_app({**app_config, "POSTGRES_SINK_DSN_TENANTS": grants})


def test_a_views_connectors_come_in_pages_linked_by_the_link_header(api, client):
    """Listed by name, `limit` per page; the Link header leads to the next page."""
    api.create_pipeline()
    names = [f"sink{n:02d}" for n in range(7)]
    for name in names:
        api.add_file_connector(name=name, path=f"out/{name}.jsonl")
    seen: list[str] = []
    url = "/v0/pipelines/orders/views/totals/connectors?limit=3"
    while url:
        r = client.get(url)
        assert r.status_code == 200, r.get_json()
        seen += [c["name"] for c in r.get_json()]
        link = r.headers.get("Link")
        url = link[link.index("<") + 1 : link.index(">")] if link else ""
    assert seen == names
    r = client.get("/v0/pipelines/orders/views/totals/connectors", query_string={"limit": 0})
    assert_error(r, 400, "InvalidRequest")
