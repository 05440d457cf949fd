"""GET /metrics: request histograms by route template, database series by tenant, under gunicorn.

The database series (connectors, resets, change logs) are read at scrape time,
so they are the same whichever process answers and whichever process did the
work; the request histogram adds up every gunicorn worker's samples.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import timeit
from pathlib import Path
from time import perf_counter

import pytest
import requests
import sqlalchemy as sa
from flask import Flask, Response
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.delivery.worker import DeliveryWorker
from app.extensions import db
from tests import faults
from tests.conftest import Api, assert_error

CHANGES = "/v0/pipelines/orders/views/totals/changes"
HISTOGRAM = "pipeline_manager_http_request_duration_seconds"
PUSH_ROUTE = "/v0/pipelines/<pipeline_name>/views/<view_name>/changes"


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
