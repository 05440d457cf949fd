"""Pipelines: definitions, views, and the lifecycle with its incarnations."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app.connectors.models import Connector
from app.errors import IllegalPipelineAction
from app.extensions import db
from app.pipelines import service as pipeline_service
from app.pipelines.models import Pipeline
from app.resets.executor import ResetExecutor
from app.resets.models import Reset
from tests.conftest import Api, assert_error
from tests.faults import time_passes

PIPELINE_FIELDS = {
    "name",
    "id",
    "description",
    "status",
    "incarnation",
    "views",
    "created_at",
    "status_since",
}


def get(api: Api, name: str = "orders") -> dict[str, Any]:
    """GET a pipeline, checking it answers 200."""
    r = api.client.get(f"/v0/pipelines/{name}")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def bring_to(api: Api, status: str, name: str = "orders") -> dict[str, Any]:
    """Bring a fresh stopped pipeline (with a file connector) to ``status``."""
    if status in ("running", "paused"):
        api.action(name, "start")
    if status == "paused":
        api.action(name, "pause")
    pipeline = get(api, name)
    assert pipeline["status"] == status
    return pipeline


@pytest.fixture
def orders(api: Api) -> Api:
    """A stopped, never started pipeline 'orders' with view 'totals' and connector 'sink1'."""
    api.create_pipeline()
    api.add_file_connector()
    return api


# -- definitions ----------------------------------------------------------------


def test_create_answers_201_with_the_pipeline_and_its_location(api: Api) -> None:
    r = api.client.post(
        "/v0/pipelines",
        json={"name": "orders", "description": "Order totals", "views": ["totals", "by_day"]},
    )
    assert r.status_code == 201, r.get_json()
    assert r.headers["Location"].endswith("/v0/pipelines/orders")
    body = r.get_json()
    assert set(body) >= PIPELINE_FIELDS
    assert body["name"] == "orders"
    assert uuid.UUID(body["id"])
    assert body["description"] == "Order totals"
    assert body["status"] == "stopped"
    assert body["incarnation"] == 0
    assert body["views"] == ["totals", "by_day"]
    created = dt.datetime.fromisoformat(body["created_at"])
    since = dt.datetime.fromisoformat(body["status_since"])
    assert created.tzinfo is not None and since.tzinfo is not None
    assert get(api) == body


def test_get_pipeline_shape(orders: Api) -> None:
    body = get(orders)
    assert set(body) >= PIPELINE_FIELDS
    assert isinstance(body["views"], list) and isinstance(body["incarnation"], int)


def test_list_shows_pipelines_by_name(api: Api) -> None:
    for name in ("zeta", "alpha", "mid"):
        api.create_pipeline(name)
    r = api.client.get("/v0/pipelines")
    assert r.status_code == 200
    assert [p["name"] for p in r.get_json()] == ["alpha", "mid", "zeta"]


def test_duplicate_pipeline_name_is_409(api: Api) -> None:
    first = api.create_pipeline()
    r = api.client.post("/v0/pipelines", json={"name": "orders"})
    body = assert_error(r, 409, "DuplicateName")
    assert body["details"] == {"pipeline_name": "orders"}
    assert get(api)["id"] == first["id"]


@pytest.mark.parametrize(
    "name",
    ["", "a b", "a/b", "a.b", "ä", "x" * 101, "semi;colon", "new\nline"],
    ids=["empty", "space", "slash", "dot", "non-ascii", "101-chars", "semicolon", "newline"],
)
def test_name_outside_the_pattern_is_400(api: Api, name: str) -> None:
    body = assert_error(
        api.client.post("/v0/pipelines", json={"name": name}), 400, "InvalidRequest"
    )
    assert "name" in body["details"]


@pytest.mark.parametrize("name", ["a", "Z9", "with-dash_and_underscore", "x" * 100])
def test_name_inside_the_pattern_is_accepted(api: Api, name: str) -> None:
    assert api.create_pipeline(name)["name"] == name


@pytest.mark.parametrize(
    "views", [["bad view"], ["ok", "ok"], "totals", [1]], ids=["bad-name", "dup", "str", "int"]
)
def test_invalid_views_are_400(api: Api, views: Any) -> None:
    r = api.client.post("/v0/pipelines", json={"name": "orders", "views": views})
    body = assert_error(r, 400, "InvalidRequest")
    assert "views" in body["details"]
    assert_error(api.client.get("/v0/pipelines/orders"), 404, "UnknownPipelineName")


def test_unknown_pipeline_is_404_on_every_route(api: Api) -> None:
    c = api.client
    for r in [
        c.get("/v0/pipelines/ghost"),
        c.patch("/v0/pipelines/ghost", json={"description": "x"}),
        c.delete("/v0/pipelines/ghost"),
        c.post("/v0/pipelines/ghost/start"),
        c.post("/v0/pipelines/ghost/stop"),
        c.post("/v0/pipelines/ghost/pause"),
        c.post("/v0/pipelines/ghost/resume"),
        c.get("/v0/pipelines/ghost/views"),
        c.post("/v0/pipelines/ghost/views", json={"name": "v"}),
        c.delete("/v0/pipelines/ghost/views/v"),
    ]:
        body = assert_error(r, 404, "UnknownPipelineName")
        assert body["details"] == {"pipeline_name": "ghost"}


def test_delete_stopped_pipeline_removes_it_with_its_resets(
    orders: Api, app: Flask, run_resets: Any
) -> None:
    orders.action("orders", "start")
    orders.reset()
    orders.action("orders", "stop")
    assert orders.client.delete("/v0/pipelines/orders").status_code == 204
    assert_error(orders.client.get("/v0/pipelines/orders"), 404, "UnknownPipelineName")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Reset)) == 0


@pytest.mark.parametrize("status", ["running", "paused"])
def test_delete_needs_a_stopped_pipeline(orders: Api, status: str) -> None:
    bring_to(orders, status)
    body = assert_error(orders.client.delete("/v0/pipelines/orders"), 409, "PipelineNotStopped")
    assert body["details"]["status"] == status
    assert get(orders)["status"] == status


# -- views change only while stopped ----------------------------------------------


def test_views_can_be_added_changed_and_removed_while_stopped(orders: Api) -> None:
    c = orders.client
    r = c.post("/v0/pipelines/orders/views", json={"name": "by_day"})
    assert r.status_code == 201 and r.get_json() == {"name": "by_day"}
    assert [v["name"] for v in c.get("/v0/pipelines/orders/views").get_json()] == [
        "totals",
        "by_day",
    ]
    assert_error(
        c.post("/v0/pipelines/orders/views", json={"name": "by_day"}), 409, "DuplicateName"
    )
    r = c.patch("/v0/pipelines/orders", json={"views": ["by_day", "totals", "third"]})
    assert r.status_code == 200 and r.get_json()["views"] == ["by_day", "totals", "third"]
    # The kept view kept its connector.
    assert c.get("/v0/pipelines/orders/views/totals/connectors/sink1").status_code == 200
    assert c.delete("/v0/pipelines/orders/views/third").status_code == 204
    assert get(orders)["views"] == ["by_day", "totals"]
    assert_error(c.delete("/v0/pipelines/orders/views/third"), 404, "UnknownView")


def test_removing_a_view_removes_its_connectors(orders: Api) -> None:
    c = orders.client
    assert c.patch("/v0/pipelines/orders", json={"views": []}).status_code == 200
    assert c.post("/v0/pipelines/orders/views", json={"name": "totals"}).status_code == 201
    r = c.get("/v0/pipelines/orders/views/totals/connectors")
    assert r.status_code == 200 and r.get_json() == []


CHANGES_NEEDING_STOPPED = {
    "add-view": ("post", "/v0/pipelines/orders/views", {"name": "by_day"}),
    "remove-view": ("delete", "/v0/pipelines/orders/views/totals", None),
    "patch-views": ("patch", "/v0/pipelines/orders", {"views": ["totals", "more"]}),
    "add-connector": (
        "post",
        "/v0/pipelines/orders/views/totals/connectors",
        {"name": "sink2", "transport": {"name": "file", "config": {"path": "two.jsonl"}}},
    ),
    "remove-connector": ("delete", "/v0/pipelines/orders/views/totals/connectors/sink1", None),
    "delete-pipeline": ("delete", "/v0/pipelines/orders", None),
}


@pytest.mark.parametrize("status", ["running", "paused"])
@pytest.mark.parametrize("change", sorted(CHANGES_NEEDING_STOPPED))
def test_definition_changes_need_a_stopped_pipeline(orders: Api, status: str, change: str) -> None:
    bring_to(orders, status)
    method, url, body = CHANGES_NEEDING_STOPPED[change]
    r = getattr(orders.client, method)(url, json=body)
    error = assert_error(r, 409, "PipelineNotStopped")
    assert error["details"] == {"pipeline_name": "orders", "status": status}
    pipeline = get(orders)
    assert pipeline["views"] == ["totals"]
    connectors = orders.client.get("/v0/pipelines/orders/views/totals/connectors").get_json()
    assert [c["name"] for c in connectors] == ["sink1"]


def test_refused_patch_changes_nothing_at_all(orders: Api) -> None:
    bring_to(orders, "running")
    r = orders.client.patch(
        "/v0/pipelines/orders", json={"description": "new text", "views": ["other"]}
    )
    assert_error(r, 409, "PipelineNotStopped")
    assert get(orders)["description"] == ""


def test_description_may_change_while_running(orders: Api) -> None:
    bring_to(orders, "running")
    r = orders.client.patch("/v0/pipelines/orders", json={"description": "still running"})
    assert r.status_code == 200 and r.get_json()["description"] == "still running"
    # Naming the same views is no change either.
    r = orders.client.patch("/v0/pipelines/orders", json={"views": ["totals"]})
    assert r.status_code == 200


# -- the lifecycle ----------------------------------------------------------------

# (status before, action) -> (status after, incarnation change) or the 409.
TRANSITIONS = {
    ("stopped", "start"): ("running", 1),
    ("stopped", "stop"): ("stopped", 0),
    ("stopped", "pause"): None,
    ("stopped", "resume"): None,
    ("running", "start"): ("running", 0),
    ("running", "stop"): ("stopped", 0),
    ("running", "pause"): ("paused", 0),
    ("running", "resume"): ("running", 0),
    ("paused", "start"): ("running", 0),
    ("paused", "stop"): ("stopped", 0),
    ("paused", "pause"): ("paused", 0),
    ("paused", "resume"): ("running", 0),
    ("stopped", "restart"): ("running", 1),
    ("running", "restart"): ("running", 1),
    ("paused", "restart"): ("running", 1),
}


@pytest.mark.parametrize(("before", "action"), sorted(TRANSITIONS))
def test_lifecycle_action_from_each_status(orders: Api, before: str, action: str) -> None:
    start = bring_to(orders, before)
    r = orders.client.post(f"/v0/pipelines/orders/{action}")
    outcome = TRANSITIONS[(before, action)]
    if outcome is None:
        body = assert_error(r, 409, "IllegalPipelineAction")
        assert body["details"] == {"pipeline_name": "orders", "status": before, "action": action}
        assert get(orders) == start
        return
    after, bump = outcome
    assert r.status_code in (200, 202), r.get_json()
    body = r.get_json()
    assert body["status"] == after
    assert body["incarnation"] == start["incarnation"] + bump
    assert get(orders) == body
    if after == before and not bump:
        # A no-op: nothing moved, not even the status timestamp.
        assert body == start
    else:
        since = dt.datetime.fromisoformat(body["status_since"])
        assert since > dt.datetime.fromisoformat(start["status_since"])


def test_every_start_from_stopped_begins_a_new_incarnation(orders: Api) -> None:
    assert get(orders)["incarnation"] == 0
    for expected in (1, 2, 3):
        assert orders.action("orders", "start")["incarnation"] == expected
        assert orders.action("orders", "pause")["incarnation"] == expected
        assert orders.action("orders", "resume")["incarnation"] == expected
        assert orders.action("orders", "stop")["incarnation"] == expected


def test_pause_and_resume_keep_outstanding_tokens_valid(orders: Api) -> None:
    orders.action("orders", "start")
    token = orders.reset()
    orders.action("orders", "pause")
    orders.action("orders", "resume")
    assert orders.status(token).status_code == 200


def reset_rows(app: Flask) -> dict[str, Reset]:
    """Return every reset, keyed by its token."""
    with app.app_context():
        rows = db.session.execute(sa.select(Reset)).scalars().all()
        db.session.expunge_all()
        return {row.token: row for row in rows}


def test_stop_abandons_unfinished_resets_and_keeps_finished_ones(
    orders: Api, app: Flask, run_resets: Any
) -> None:
    orders.add_file_connector(name="sink2", path="two.jsonl")
    orders.add_file_connector(name="sink3", path="three.jsonl")
    orders.action("orders", "start")
    done = orders.reset(connector="sink1")
    assert run_resets() == 1
    claimed = orders.reset(connector="sink2")
    with app.app_context():
        # A worker holds this one mid-way.
        assert ResetExecutor(owner="other-worker").claim() is not None
        db.session.remove()
    queued = orders.reset(connector="sink3")

    orders.action("orders", "stop")

    rows = reset_rows(app)
    assert rows[done].status == "complete" and rows[done].error is None
    for token in (claimed, queued):
        row = rows[token]
        assert row.status == "abandoned"
        assert row.completed_at is not None
        assert row.error
        assert row.queued_connector_id is None
        assert row.lease_owner is None
    # Nothing of the ended incarnation runs any more, even after a new start...
    orders.action("orders", "start")
    assert run_resets() == 0  # sink2's lease is still the other worker's
    with app.app_context():
        # ...which never comes back: its lease runs out.
        db.session.execute(sa.update(Connector).values(lease_expires_at=None, lease_owner=None))
        time_passes()
        db.session.commit()
        db.session.remove()
    assert run_resets() == 1
    rows = reset_rows(app)
    assert rows[queued].status == "abandoned" and rows[claimed].status == "abandoned"
    # ...but sink2's reset had begun, so its sink owes a snapshot: it was redone.
    (redo,) = [row for row in rows.values() if row.origin == "redo"]
    assert redo.connector_id == rows[claimed].connector_id
    assert redo.status == "complete" and redo.incarnation == 2


def test_pause_does_not_abandon_resets(orders: Api, app: Flask, run_resets: Any) -> None:
    orders.action("orders", "start")
    token = orders.reset()
    orders.action("orders", "pause")
    assert run_resets() == 0  # nothing runs while paused
    assert reset_rows(app)[token].status == "inprogress"
    orders.action("orders", "resume")
    assert run_resets() == 1
    assert orders.status(token).get_json()["status"] == "complete"


# -- several processes at once ------------------------------------------------------


def change_behind_the_session(app: Flask, **values: Any) -> None:
    """Change the pipeline's row on a connection of its own, as another process would."""
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(sa.update(Pipeline).where(Pipeline.name == "orders").values(**values))


def test_two_starts_at_once_begin_one_incarnation(orders: Api, app: Flask) -> None:
    with app.app_context():
        stale = pipeline_service.get_pipeline("default", "orders")
        assert stale.status == "stopped"
        change_behind_the_session(app, status="running", incarnation=1)
        started = pipeline_service.start(stale)
        assert (started.status, started.incarnation) == ("running", 1)
        db.session.remove()
    assert get(orders)["incarnation"] == 1


def test_action_on_a_status_changed_meanwhile_is_judged_on_the_new_status(
    orders: Api, app: Flask
) -> None:
    orders.action("orders", "start")
    with app.app_context():
        stale = pipeline_service.get_pipeline("default", "orders")
        assert stale.status == "running"
        change_behind_the_session(app, status="stopped")
        with pytest.raises(IllegalPipelineAction):
            pipeline_service.pause(stale)
        db.session.remove()
    assert get(orders)["status"] == "stopped"


def test_concurrent_creates_of_one_name_make_one_pipeline(app: Flask, auth_headers) -> None:
    import threading

    barrier = threading.Barrier(4)
    answers: list[int] = []

    def create() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post("/v0/pipelines", json={"name": "orders"}, headers=auth_headers)
        if r.status_code != 201:
            assert_error(r, 409, "DuplicateName")
        answers.append(r.status_code)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [201, 409, 409, 409]


def test_restart_is_one_new_incarnation_and_ends_the_old_tokens(running_pipeline: Api) -> None:
    token = running_pipeline.reset()
    assert running_pipeline.status(token).status_code == 200
    r = running_pipeline.client.post("/v0/pipelines/orders/restart")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "running" and r.get_json()["incarnation"] == 2
    # The reset of incarnation 1 never runs: its token answers 410, and a new
    # reset is a new token of incarnation 2.
    assert_error(running_pipeline.status(token), 410, "PipelineRestarted")
    fresh = running_pipeline.reset()
    assert fresh != token
    assert running_pipeline.status(fresh).get_json()["incarnation"] == 2


# -- listing: pages and the status filter -----------------------------------------


def _names(response) -> list[str]:
    return [pipeline["name"] for pipeline in response.get_json()]


def test_the_list_comes_in_pages_linked_by_the_link_header(api: Api) -> None:
    for name in ("a", "b", "c", "d", "e"):
        api.create_pipeline(name)
    seen: list[str] = []
    url = "/v0/pipelines?limit=2"
    pages = 0
    while url:
        r = api.client.get(url)
        assert r.status_code == 200, r.get_json()
        seen += _names(r)
        pages += 1
        link = r.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
        if url:
            assert link.endswith('; rel="next"') and "limit=2" in url
    assert seen == ["a", "b", "c", "d", "e"] and pages == 3
    # Without a limit: the first 100, no Link while they are all.
    r = api.client.get("/v0/pipelines")
    assert _names(r) == seen and "Link" not in r.headers


def test_the_list_filters_by_status_and_pages_keep_the_filter(api: Api) -> None:
    for name in ("a", "b", "c", "d"):
        api.create_pipeline(name)
    for name in ("a", "c", "d"):
        api.action(name, "start")
    r = api.client.get("/v0/pipelines?status=running&limit=2")
    assert _names(r) == ["a", "c"]
    link = r.headers["Link"]
    assert "status=running" in link
    r = api.client.get(link[1 : link.index(">")])
    assert _names(r) == ["d"] and "Link" not in r.headers
    assert _names(api.client.get("/v0/pipelines?status=stopped")) == ["b"]


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=1001", "limit=x", "status=gone", "after=", "after=a%00b", "limt=5"],
    ids=str,
)
def test_a_bad_list_query_is_400(api: Api, query: str) -> None:
    assert_error(api.client.get(f"/v0/pipelines?{query}"), 400, "InvalidRequest")


def test_pipelines_added_between_pages_are_neither_skipped_nor_repeated(api: Api) -> None:
    for name in ("b", "d", "f"):
        api.create_pipeline(name)
    first = api.client.get("/v0/pipelines?limit=2")
    assert _names(first) == ["b", "d"]
    api.create_pipeline("a")  # before the cut: on a page already read
    api.create_pipeline("e")  # after it: on the next page
    link = first.headers["Link"]
    rest = api.client.get(link[1 : link.index(">")])
    assert _names(rest) == ["e", "f"]
