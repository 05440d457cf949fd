"""GET /metrics: request histograms by route template, database series by tenant, under gunicorn.

The database series (connectors, resets, change logs) are read at scrape time,
so they are the same whichever process answers and whichever process did the
work; the request histogram adds up every gunicorn worker's samples. A scrape
lists at most METRICS_MAX_ROWS connectors and views (shared fairly among
tenants), keeps every per-tenant total, and is cached per scope for
METRICS_CACHE_SECONDS (off in this module unless a test turns it on).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
import timeit
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask, Response
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.connectors.models import Connector
from app.delivery.worker import DeliveryWorker
from app.extensions import db
from app.pipelines.models import Pipeline, View
from app.resets.models import Reset
from app.view_data.models import ViewLog
from tests import faults
from tests.conftest import Api, assert_error

CHANGES = "/v0/pipelines/orders/views/totals/changes"
HISTOGRAM = "pipeline_manager_http_request_duration_seconds"
PUSH_ROUTE = "/v0/pipelines/<pipeline_name>/views/<view_name>/changes"
LAG = "pipeline_manager_connector_lag_records"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """No cache: most tests here scrape, change something, and scrape again.

    The tests of the cache turn it on themselves.
    """
    return {**app_config, "METRICS_CACHE_SECONDS": 0}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Parse an exposition into {(sample name, labels): value} with prometheus_client's parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the exposition has no such series."""
    return parsed.get((name, frozenset(labels.items())))


def connector(name: str = "sink1", pipeline: str = "orders", tenant: str = "default") -> dict:
    """The labels of a connector series."""
    return {"tenant": tenant, "pipeline": pipeline, "view": "totals", "connector": name}


def scrape(client, headers: dict | None = None) -> dict:
    """GET /metrics and parse it."""
    r = client.get("/metrics", headers=headers or {})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(r.get_data(as_text=True))


def deliver(app: Flask) -> None:
    """Deliver everything that waits, in this process."""
    with app.app_context():
        DeliveryWorker("test-worker").run_pending()
        db.session.remove()


def build(
    app: Flask,
    tenant: str,
    count: int,
    prefix: str = "bulk",
    status: str = "running",
    connector_of: Callable[[int], dict] = lambda i: {},
    log_end_of: Callable[[int], int] = lambda i: 0,
) -> None:
    """Add ``count`` pipelines ``{prefix}-00000``... of ``tenant`` in bulk (a few statements).

    Each has one view ``totals`` whose log ends at ``log_end_of(i)`` and one
    file connector ``sink`` with the columns ``connector_of(i)`` gives.
    """
    with app.app_context():
        session = db.session
        pipelines = [
            {"id": uuid.uuid4(), "tenant": tenant, "name": f"{prefix}-{i:05d}", "status": status}
            for i in range(count)
        ]
        session.execute(sa.insert(Pipeline), pipelines)
        view_ids = session.scalars(
            sa.insert(View).returning(View.id, sort_by_parameter_order=True),
            [{"pipeline_id": p["id"], "name": "totals"} for p in pipelines],
        ).all()
        session.execute(
            sa.insert(ViewLog),
            [{"view_id": v, "last_seq": log_end_of(i)} for i, v in enumerate(view_ids)],
        )
        # The connector's tenant, where the model keeps a copy of it (the due index).
        extra = {"tenant": tenant} if "tenant" in Connector.__table__.c else {}
        session.execute(
            sa.insert(Connector),
            [
                {"view_id": v, "name": "sink", "transport": "file", **extra, **connector_of(i)}
                for i, v in enumerate(view_ids)
            ],
        )
        session.commit()
        db.session.remove()


def listed(parsed: dict, tenant: str) -> list[str]:
    """The pipelines of ``tenant`` whose connector has series in a scrape, sorted."""
    return sorted(
        dict(labels)["pipeline"]
        for name, labels in parsed
        if name == LAG and dict(labels)["tenant"] == tenant
    )


@contextmanager
def database_series_queries(app: Flask, hold: float = 0.0) -> Iterator[list[str]]:
    """Collect the SQL statements that read the database series (they all join pipelines).

    Authentication's look-ups (api_keys) are left out: they are not the scrape's.
    ``hold``: seconds the first such statement is held up before it runs.
    """
    seen: list[str] = []

    def note(conn, cursor, statement: str, *args: object) -> None:
        if "pipelines" in statement:
            seen.append(statement)
            if len(seen) == 1:
                time.sleep(hold)

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)


# -- who may scrape ---------------------------------------------------------------------------


def test_metrics_needs_a_credential_by_default(anon_client, read_headers) -> None:
    r = anon_client.get("/metrics")
    assert_error(r, 401, "AuthenticationFailed")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert anon_client.get("/metrics", headers=read_headers).status_code == 200


def test_public_metrics_need_no_credential(app: Flask, anon_client) -> None:
    app.config["METRICS_PUBLIC"] = True
    assert anon_client.get("/metrics").status_code == 200


def test_a_tenant_sees_only_its_own_connectors_and_the_operator_sees_all(
    app: Flask, running_pipeline: Api, make_key
) -> None:
    other = Api(app.test_client())
    other.client.environ_base["HTTP_AUTHORIZATION"] = make_key("other", "write")["Authorization"]
    other.create_pipeline("secret-plans")
    other.add_file_connector("secret-plans", name="hidden")

    mine = scrape(app.test_client(), make_key("default", "read"))
    assert value(mine, "pipeline_manager_connector_lag_records", **connector()) == 0
    assert not [key for key in mine if ("tenant", "other") in key[1]]
    theirs = scrape(app.test_client(), make_key("other", "read"))
    assert value(theirs, "pipeline_manager_connector_lag_records", **connector()) is None
    hidden = connector("hidden", "secret-plans", "other")
    assert value(theirs, "pipeline_manager_connector_lag_records", **hidden) == 0

    app.config["METRICS_OPERATOR_TENANT"] = "ops"
    everything = scrape(app.test_client(), make_key("ops", "read"))
    assert value(everything, "pipeline_manager_connector_lag_records", **connector()) == 0
    assert value(everything, "pipeline_manager_connector_lag_records", **hidden) == 0


# -- requests ---------------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_method_and_status(
    client, running_pipeline: Api
) -> None:
    count = f"{HISTOGRAM}_count"
    item = "/v0/pipelines/<pipeline_name>"
    series = {
        "found": {"route": item, "method": "GET", "status": "200"},
        "unknown": {"route": item, "method": "GET", "status": "404"},
        "no_route": {"route": "unmatched", "method": "GET", "status": "404"},
        "odd_method": {"route": "unmatched", "method": "other", "status": "405"},
    }
    # The histogram is the process's: other tests' requests are in it too.
    before = scrape(client)
    for name in ("orders", "nope-1", "nope-2"):
        client.get(f"/v0/pipelines/{name}")
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    client.open("/healthz", method="BREW")
    after = scrape(client)
    added = {
        key: (value(after, count, **labels) or 0) - (value(before, count, **labels) or 0)
        for key, labels in series.items()
    }
    assert added == {"found": 1, "unknown": 2, "no_route": 2, "odd_method": 1}
    routes = {dict(labels).get("route") for name, labels in after if name == count}
    assert not [route for route in routes if "nope" in route or "such" in route]


def test_the_request_hook_costs_a_few_microseconds(app: Flask) -> None:
    """The hook sits on GET reset_status (~200 µs in process): it must stay small.

    The bound is loose (a shared, slow machine); typical is 2-4 µs.
    """
    response = Response(b"{}")
    with app.test_request_context("/v0/pipelines/orders/reset_status?token=t"):
        from flask import request

        request.environ["pipeline_manager.started"] = perf_counter()
        number = 20_000
        best = min(timeit.repeat(lambda: metrics._observe(response), number=number, repeat=5))
    assert best / number < 25e-6


# -- connectors, resets, change logs ----------------------------------------------------------


def test_connector_series_follow_delivery_and_resets(
    app: Flask, client, running_pipeline: Api, run_resets, tmp_path: Path
) -> None:
    changes = [{"insert": {"id": i}} for i in range(7)]
    assert client.post(CHANGES, json=changes).status_code == 200
    before = scrape(client)
    assert value(before, "pipeline_manager_connector_lag_records", **connector()) == 7
    assert value(before, "pipeline_manager_connector_delivered_records_total", **connector()) == 0
    last_success = "pipeline_manager_connector_last_success_timestamp_seconds"
    assert value(before, last_success, **connector()) is None  # never delivered

    deliver(app)
    sink = tmp_path / "sinks" / "default" / "out" / "totals.jsonl"
    after = scrape(client)
    labels = connector()
    assert value(after, "pipeline_manager_connector_lag_records", **labels) == 0
    assert value(after, "pipeline_manager_connector_delivered_records_total", **labels) == 7
    size = sink.stat().st_size
    assert value(after, "pipeline_manager_connector_delivered_bytes_total", **labels) == size
    assert value(after, "pipeline_manager_connector_state", **labels, state="healthy") == 1
    assert value(after, "pipeline_manager_connector_state", **labels, state="failed") == 0
    assert value(after, "pipeline_manager_connector_consecutive_failures", **labels) == 0
    takeovers = "pipeline_manager_connector_lease_takeovers_total"
    assert value(after, takeovers, **labels) == 0
    delivered_at = client.get(
        "/v0/pipelines/orders/views/totals/connectors/sink1/stats"
    ).get_json()["last_delivered_at"]
    assert value(after, last_success, **labels) == pytest.approx(
        dt.datetime.fromisoformat(delivered_at).timestamp()
    )
    client.post("/v0/pipelines/orders/views/totals/connectors/sink1/pause")
    paused = scrape(client)
    assert value(paused, "pipeline_manager_connector_state", **labels, state="paused") == 1
    client.post("/v0/pipelines/orders/views/totals/connectors/sink1/start")
    view = {"tenant": "default", "pipeline": "orders", "view": "totals"}
    assert value(after, "pipeline_manager_view_changes_total", **view) == 7
    assert value(after, "pipeline_manager_view_change_log_records", **view) == 7

    running_pipeline.reset()
    queued = scrape(client)
    assert value(queued, "pipeline_manager_resets", tenant="default", status="inprogress",
                 phase="queued") == 1  # fmt: skip
    run_resets()
    done = scrape(client)
    assert value(done, "pipeline_manager_resets", tenant="default", status="complete",
                 phase="done") == 1  # fmt: skip
    assert value(done, "pipeline_manager_reset_replayed_records_total", tenant="default") == 7
    assert value(done, "pipeline_manager_connector_delivered_records_total", **labels) == 14
    assert value(done, "pipeline_manager_database_up") == 1
    assert value(done, "pipeline_manager_metrics_truncated") == 0


def test_a_scrape_lists_at_most_metrics_max_rows_connectors(
    app: Flask, client, running_pipeline: Api
) -> None:
    running_pipeline.action("orders", "stop")
    running_pipeline.add_file_connector(name="sink2", path="out/two.jsonl")
    app.config["METRICS_MAX_ROWS"] = 1
    parsed = scrape(client)
    lags = [key for key in parsed if key[0] == "pipeline_manager_connector_lag_records"]
    assert len(lags) == 1
    assert value(parsed, "pipeline_manager_metrics_truncated") == 1
    assert value(parsed, "pipeline_manager_connector_state", **connector(), state="stopped") == 1


def test_a_database_that_does_not_answer_leaves_the_request_series_and_database_up_0(
    app: Flask, client
) -> None:
    with app.app_context():
        db.session.execute(sa.text("DROP TABLE view_records"))
        db.session.execute(sa.text("DROP TABLE view_changes"))
        db.session.execute(sa.text("DROP TABLE view_logs"))
        db.session.commit()
    app.config["METRICS_PUBLIC"] = True  # no key look-up: the scrape itself meets the error
    assert client.get("/healthz").status_code == 200
    parsed = scrape(client)
    assert value(parsed, "pipeline_manager_database_up") == 0
    assert [key for key in parsed if key[0] == f"{HISTOGRAM}_count"]
    assert not [key for key in parsed if key[0].startswith("pipeline_manager_connector_")]


# -- the budget -------------------------------------------------------------------------------


def test_a_scrape_lists_at_most_the_budget_however_many_connectors(
    app: Flask, read_headers: dict
) -> None:
    budget = app.config["METRICS_MAX_ROWS"]
    assert budget == 500  # the default
    build(app, "default", 3 * budget, log_end_of=lambda i: 5)
    r = app.test_client().get("/metrics", headers=read_headers)
    assert r.status_code == 200
    # The default budget keeps the database series well under 2 MB (the target
    # at 100k). The request histogram beside them is the process's: in a test session
    # it holds every route and status the earlier tests hit, so it is left out here.
    database_part = [
        line
        for line in r.get_data(as_text=True).splitlines()
        if "pipeline_manager_http_request_duration_seconds" not in line
    ]
    assert len("\n".join(database_part)) < 1_000_000
    parsed = samples(r.get_data(as_text=True))
    assert len(listed(parsed, "default")) == budget
    views = [key for key in parsed if key[0] == "pipeline_manager_view_changes_total"]
    assert len(views) == budget
    tenant = {"tenant": "default"}
    healthy = value(parsed, "pipeline_manager_tenant_connectors", **tenant, state="healthy")
    assert healthy == 3 * budget
    assert value(parsed, "pipeline_manager_tenant_lag_records", **tenant) == 5 * 3 * budget
    assert value(parsed, "pipeline_manager_tenant_views", **tenant) == 3 * budget
    assert value(parsed, "pipeline_manager_metrics_listed_connectors", **tenant) == budget
    assert value(parsed, "pipeline_manager_metrics_tenant_truncated", **tenant) == 1
    assert value(parsed, "pipeline_manager_metrics_truncated") == 1


def _attention_case(i: int) -> dict:
    """Connector ``i`` of the totals test: every state, and counters that add up to known sums."""
    return {
        "sync_state": "failed" if i % 10 == 3 else "resetting" if i % 10 == 6 else "in_sync",
        "consecutive_failures": 2 if i % 10 == 8 else 0,
        "paused": i % 25 == 1,
        "transmitted_records": i,
        "transmitted_bytes": 10 * i,
        "transport_errors": i % 3,
        "lease_takeovers": int(i % 50 == 0),
        "delivered_seq": 4 if i % 4 == 0 else 10,
    }


def _expected_health(i: int) -> str:
    """What the stats route would say of a running pipeline's connector ``i`` (above)."""
    case = _attention_case(i)
    if case["paused"]:
        return "paused"
    if case["sync_state"] != "in_sync":
        return case["sync_state"]
    return "failing" if case["consecutive_failures"] else "healthy"


def test_tenant_totals_are_exact_and_the_listed_connectors_need_attention_first(
    app: Flask, read_headers: dict
) -> None:
    app.config["METRICS_MAX_ROWS"] = 10
    build(app, "default", 200, connector_of=_attention_case, log_end_of=lambda i: 10)
    build(app, "default", 20, prefix="halted", status="stopped")
    build(app, "default", 15, prefix="held", status="paused")
    with app.app_context():
        targets = db.session.execute(
            sa.select(View.pipeline_id, Connector.id).join(View).order_by(Connector.id).limit(7)
        ).all()
        db.session.execute(
            sa.insert(Reset),
            [
                {"pipeline_id": pipeline_id, "connector_id": connector_id, "incarnation": 1,
                 "status": "complete" if n < 5 else "inprogress",
                 "phase": "done" if n < 5 else "queued", "replayed_records": 100}
                for n, (pipeline_id, connector_id) in enumerate(targets)
            ],
        )  # fmt: skip
        # As the executor counts them on the connectors (what a scrape sums).
        for n, (_pipeline_id, connector_id) in enumerate(targets):
            db.session.execute(
                sa.update(Connector)
                .where(Connector.id == connector_id)
                .values(
                    resets_completed=Connector.resets_completed + int(n < 5),
                    replayed_records=Connector.replayed_records + 100,
                )
            )
        db.session.commit()
        db.session.remove()
    parsed = scrape(app.test_client(), read_headers)

    # Given up on first, by name: those with i % 10 == 3.
    assert listed(parsed, "default") == [f"bulk-{i:05d}" for i in range(3, 100, 10)]
    first = {"tenant": "default", "pipeline": "bulk-00003", "view": "totals", "connector": "sink"}
    assert value(parsed, "pipeline_manager_connector_state", **first, state="failed") == 1

    tenant = {"tenant": "default"}
    states = [_expected_health(i) for i in range(200)] + ["stopped"] * 20 + ["paused"] * 15
    for state in ("healthy", "failing", "resetting", "failed", "paused", "stopped"):
        count = value(parsed, "pipeline_manager_tenant_connectors", **tenant, state=state)
        assert count == states.count(state), state
    cases = [_attention_case(i) for i in range(200)]
    sync = [c["sync_state"] for c in cases] + ["in_sync"] * 35
    for state in ("in_sync", "resetting", "failed"):
        count = value(parsed, "pipeline_manager_tenant_connectors_sync_state", **tenant,
                      sync_state=state)  # fmt: skip
        assert count == sync.count(state), state
    sums = {
        "pipeline_manager_tenant_connectors_paused": sum(c["paused"] for c in cases),
        "pipeline_manager_tenant_delivered_records_total": sum(range(200)),
        "pipeline_manager_tenant_delivered_bytes_total": 10 * sum(range(200)),
        "pipeline_manager_tenant_transport_errors_total": sum(i % 3 for i in range(200)),
        "pipeline_manager_tenant_lease_takeovers_total": 4,
        "pipeline_manager_tenant_lag_records": 6 * 50,
        "pipeline_manager_connector_leases_expired": 0,
        "pipeline_manager_tenant_views": 235,
        "pipeline_manager_tenant_view_changes_total": 10 * 200,
        "pipeline_manager_tenant_view_change_log_records": 10 * 200,
        "pipeline_manager_metrics_listed_connectors": 10,
        "pipeline_manager_metrics_tenant_truncated": 1,
    }
    assert {name: value(parsed, name, **tenant) for name in sums} == sums
    resets = "pipeline_manager_resets"
    assert value(parsed, resets, **tenant, status="complete", phase="done") == 5
    assert value(parsed, resets, **tenant, status="inprogress", phase="queued") == 2
    assert value(parsed, "pipeline_manager_reset_replayed_records_total", **tenant) == 700

    # With room for all, the per-connector states add up to the totals (SQL and
    # Python agree on what each state means).
    app.config["METRICS_MAX_ROWS"] = 1_000
    everything = scrape(app.test_client(), read_headers)
    per_state = {}
    for (name, labels), number in everything.items():
        if name == "pipeline_manager_connector_state" and number == 1:
            state = dict(labels)["state"]
            per_state[state] = per_state.get(state, 0) + 1
    assert per_state == {state: states.count(state) for state in set(states)}
    assert value(everything, "pipeline_manager_metrics_tenant_truncated", **tenant) == 0


def test_the_operator_scrape_shares_the_budget_so_no_tenant_hides_another(
    app: Flask, make_key
) -> None:
    app.config.update(METRICS_OPERATOR_TENANT="ops", METRICS_MAX_ROWS=50)
    # The big tenant's connectors are the oldest and its name sorts first.
    build(app, "aaa-big", 300)
    build(app, "mid", 30)
    build(app, "small", 4)
    parsed = scrape(app.test_client(), make_key("ops", "read"))
    assert len(listed(parsed, "small")) == 4
    assert len(listed(parsed, "mid")) == 23
    assert len(listed(parsed, "aaa-big")) == 23
    truncated = "pipeline_manager_metrics_tenant_truncated"
    assert [value(parsed, truncated, tenant=t) for t in ("aaa-big", "mid", "small")] == [1, 1, 0]
    healthy = [
        value(parsed, "pipeline_manager_tenant_connectors", tenant=t, state="healthy")
        for t in ("aaa-big", "mid", "small")
    ]
    assert healthy == [300, 30, 4]
    # A tenant's own scrape has the whole budget to itself.
    mine = scrape(app.test_client(), make_key("mid", "read"))
    assert len(listed(mine, "mid")) == 30
    assert value(mine, truncated, tenant="mid") == 0


def test_with_more_tenants_than_the_budget_each_listed_tenant_gets_one_and_all_keep_totals(
    app: Flask, make_key
) -> None:
    """More tenants cut than the UNION ALL takes: one ranking statement lists them."""
    tenants = [f"t{i:02d}" for i in range(metrics._CUT_TENANTS + 18)]
    app.config.update(METRICS_OPERATOR_TENANT="ops", METRICS_MAX_ROWS=40)
    for tenant in tenants:
        build(app, tenant, 2)
    parsed = scrape(app.test_client(), make_key("ops", "read"))
    shown = {tenant: len(listed(parsed, tenant)) for tenant in tenants}
    # Shares of 0 and 1; the odd rows go to the last tenants by name.
    assert shown == {tenant: int(i >= len(tenants) - 40) for i, tenant in enumerate(tenants)}
    for tenant in tenants:
        assert value(parsed, "pipeline_manager_tenant_connectors", tenant=tenant,
                     state="healthy") == 2  # fmt: skip
        assert value(parsed, "pipeline_manager_metrics_tenant_truncated", tenant=tenant) == 1


@pytest.mark.parametrize(
    ("counts", "budget", "shares"),
    [
        ({"big": 300, "mid": 30, "small": 4}, 50, {"big": 23, "mid": 23, "small": 4}),
        ({"a": 10, "b": 10}, 100, {"a": 10, "b": 10}),
        ({"a": 5, "b": 5, "c": 5}, 10, {"a": 3, "b": 3, "c": 4}),
        ({"a": 1, "b": 1, "c": 1}, 2, {"a": 0, "b": 1, "c": 1}),
        ({"a": 7, "b": 2}, 0, {"a": 0, "b": 0}),
        ({}, 10, {}),
    ],
)
def test_fair_shares_give_each_tenant_an_equal_share_and_hand_on_what_it_leaves(
    counts: dict, budget: int, shares: dict
) -> None:
    got = metrics.fair_shares(counts, budget)
    assert got == shares
    assert sum(got.values()) == min(budget, sum(counts.values()))
    assert all(got[t] <= counts[t] for t in counts)


@settings(max_examples=300, deadline=None)
@given(
    counts=st.dictionaries(st.text("abc", min_size=1, max_size=3), st.integers(1, 40)),
    budget=st.integers(0, 150),
)
def test_fair_shares_spend_the_budget_and_differ_by_at_most_one_among_tenants_cut(
    counts: dict, budget: int
) -> None:
    got = metrics.fair_shares(counts, budget)
    assert set(got) == set(counts)
    assert sum(got.values()) == min(budget, sum(counts.values()))
    assert all(0 <= got[t] <= counts[t] for t in counts)
    cut = [got[t] for t in counts if got[t] < counts[t]]
    if cut:
        assert max(got.values()) <= min(cut) + 1


# -- the cache --------------------------------------------------------------------------------


def test_a_scrape_within_metrics_cache_seconds_runs_no_query_and_a_later_one_does(
    app: Flask, client, running_pipeline: Api
) -> None:
    app.config["METRICS_CACHE_SECONDS"] = 5
    now = [1000.0]
    app.extensions[metrics.CACHE_EXTENSION].clock = lambda: now[0]
    with database_series_queries(app) as seen:
        assert value(scrape(client), LAG, **connector()) == 0
        assert seen
        assert client.post(CHANGES, json=[{"insert": {"id": 1}}]).status_code == 200
        seen.clear()
        now[0] += 4.9
        cached = scrape(client)
        assert seen == []
        assert value(cached, LAG, **connector()) == 0  # as it was 4.9 s ago
        now[0] += 0.2
        fresh = scrape(client)
        assert seen
        assert value(fresh, LAG, **connector()) == 1


def test_a_tenants_cached_series_never_reach_another_tenant(
    app: Flask, running_pipeline: Api, make_key
) -> None:
    app.config.update(METRICS_CACHE_SECONDS=60, METRICS_OPERATOR_TENANT="ops")
    other = Api(app.test_client())
    other.client.environ_base["HTTP_AUTHORIZATION"] = make_key("other", "write")["Authorization"]
    other.create_pipeline("secret-plans")
    other.add_file_connector("secret-plans", name="hidden")
    hidden = connector("hidden", "secret-plans", "other")
    keys = {tenant: make_key(tenant, "read") for tenant in ("default", "other", "ops")}

    for _ in range(2):  # the second round is served from the cache
        mine = scrape(app.test_client(), keys["default"])
        theirs = scrape(app.test_client(), keys["other"])
        everything = scrape(app.test_client(), keys["ops"])
        assert not [key for key in mine if ("tenant", "other") in key[1]]
        assert not [key for key in theirs if ("tenant", "default") in key[1]]
        assert value(mine, LAG, **connector()) == 0
        assert value(theirs, LAG, **hidden) == 0
        assert value(everything, LAG, **connector()) == 0
        assert value(everything, LAG, **hidden) == 0


def test_concurrent_scrapes_of_one_tenant_run_the_queries_once(
    app: Flask, running_pipeline: Api, read_headers: dict
) -> None:
    app.config["METRICS_CACHE_SECONDS"] = 5
    with database_series_queries(app) as seen:
        alone = scrape(app.test_client(), read_headers)
    once = len(seen)
    app.extensions[metrics.CACHE_EXTENSION].clear()

    scrapers = 8
    start = threading.Barrier(scrapers)
    bodies: list[str] = []

    def scrape_once() -> None:
        client = app.test_client()
        start.wait()
        r = client.get("/metrics", headers=read_headers)
        assert r.status_code == 200
        bodies.append(r.get_data(as_text=True))

    # The first query is held up, so the other scrapes come in while it runs.
    with database_series_queries(app, hold=0.3) as seen:
        threads = [threading.Thread(target=scrape_once) for _ in range(scrapers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert len(bodies) == scrapers
    assert len(seen) == once
    for body in bodies:
        assert value(samples(body), LAG, **connector()) == value(alone, LAG, **connector())


def test_an_unanswered_scrape_is_not_kept_and_a_failed_computation_is_tried_again() -> None:
    cache = metrics.ScrapeCache()
    calls: list[str] = []

    def down() -> tuple[bytes, bool]:
        calls.append("down")
        return b"database_up 0", False

    assert cache.get("scope", 5, down) == cache.get("scope", 5, down) == b"database_up 0"
    assert calls == ["down", "down"]

    entered, release = threading.Event(), threading.Event()

    def broken() -> tuple[bytes, bool]:
        entered.set()
        release.wait(10)
        raise RuntimeError("a bug")

    def leader() -> None:
        with pytest.raises(RuntimeError):
            cache.get("scope", 5, broken)

    first = threading.Thread(target=leader)
    first.start()
    entered.wait(10)
    got: list[bytes] = []
    waiter = threading.Thread(
        target=lambda: got.append(cache.get("scope", 5, lambda: (b"up", True)))
    )
    waiter.start()
    time.sleep(0.05)
    release.set()
    first.join(10)
    waiter.join(10)
    assert got == [b"up"]
    assert cache.get("scope", 5, down) == b"up"  # kept this time


# -- under gunicorn ---------------------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_workers_and_a_flask_worker_report_through_one_scrape(tmp_path: Path) -> None:
    """Two gunicorn workers serve, a flask worker process delivers; every scrape adds it up."""
    settings = {"BACKGROUND_WORKER": False, "WORKER_POLL_INTERVAL": 0.1}
    with faults.served(tmp_path, settings, workers=2) as (base, env):
        flask = [faults.FLASK, "--app", "wsgi"]

        def cli(*args: str) -> str:
            done = subprocess.run(
                [*flask, *args], cwd=faults.ROOT, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        key = cli("api-keys", "create", "scraper", "--role", "write")
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {key}"
        assert s.post(f"{base}/v0/pipelines", json={"name": "orders", "views": ["totals"]}).ok
        sink_config = {"name": "file", "config": {"path": "t.jsonl"}}
        url = f"{base}/v0/pipelines/orders/views/totals/connectors"
        assert s.post(url, json={"name": "sink1", "transport": sink_config}).ok
        assert s.post(f"{base}/v0/pipelines/orders/start").ok
        total = 0
        for start in range(0, 300, 100):
            batch = [
                {"insert": {"id": i, "pad": "x" * (i % 17)}} for i in range(start, start + 100)
            ]
            assert s.post(f"{base}{CHANGES}", json=batch).ok
            total += len(batch)

        worker_env = {**env, "PIPELINE_MANAGER_BACKGROUND_WORKER": "false"}
        with open(tmp_path / "worker.log", "ab") as log:
            worker = subprocess.Popen(
                [*flask, "worker"], cwd=faults.ROOT, env=worker_env, stdout=log, stderr=log
            )
        sink = tmp_path / "sinks" / "default" / "t.jsonl"
        try:
            faults.wait_for(
                lambda: len(faults.sink_lines(sink)) == total, timeout=60, what="delivery"
            )
        finally:
            faults.stop(worker)

        # Fresh connections: each request may land on either gunicorn worker.
        for _ in range(20):
            assert requests.get(f"{base}/healthz", timeout=5).ok
        headers = {"Authorization": f"Bearer {key}"}
        scrapes = []
        for _ in range(6):
            r = requests.get(f"{base}/metrics", headers=headers, timeout=5)
            assert r.status_code == 200
            scrapes.append(samples(r.text))

    labels = connector()
    count = f"{HISTOGRAM}_count"
    seen = []
    for parsed in scrapes:
        assert (
            value(parsed, "pipeline_manager_connector_delivered_records_total", **labels) == total
        )
        delivered_bytes = value(
            parsed, "pipeline_manager_connector_delivered_bytes_total", **labels
        )
        assert delivered_bytes == sink.stat().st_size
        assert value(parsed, "pipeline_manager_connector_lag_records", **labels) == 0
        # Every worker's /healthz answers, whichever worker answered the scrape.
        seen.append(value(parsed, count, route="/healthz", method="GET", status="200"))
        pushes = value(parsed, count, route=PUSH_ROUTE, method="POST", status="200")
        assert pushes == 3
    # faults.served polls /healthz until it answers; the 20 above come on top.
    assert all(n is not None and n >= 20 for n in seen) and len(set(seen)) == 1, seen


def test_finished_resets_are_counted_without_reading_them(app, client, running_pipeline) -> None:
    """Abandoned (the pipeline stopped) and failed resets are counted on their connectors
    as they end; a scrape reads the resets in progress only."""
    running_pipeline.reset()
    client.post("/v0/pipelines/orders/stop")
    client.post("/v0/pipelines/orders/start")
    parsed = scrape(client)
    labels = {"tenant": "default"}
    assert (
        value(parsed, "pipeline_manager_resets", **labels, status="abandoned", phase="ended") == 1
    )
    assert value(parsed, "pipeline_manager_resets", **labels, status="failed", phase="ended") == 0
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    app.config["METRICS_CACHE_SECONDS"] = 0
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        scrape(client)
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    on_resets = [s for s in statements if "FROM resets" in s]
    assert on_resets and all("resets.status = " in s for s in on_resets), on_resets
