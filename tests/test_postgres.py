"""The same code on a real PostgreSQL server: migrations, lifecycle, resets, claims.

Set PIPELINE_MANAGER_TEST_POSTGRES_URL (``.ci/postgres.sh`` starts a server and
prints one). Without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from app import create_app
from app.extensions import db
from app.pipelines import service as pipelines
from app.resets.executor import ResetExecutor
from app.transports.file import FileTransport
from tests.conftest import assert_error

PG_URL = os.environ.get("PIPELINE_MANAGER_TEST_POSTGRES_URL")

if not PG_URL and os.environ.get("CI"):
    pytest.fail("CI must set PIPELINE_MANAGER_TEST_POSTGRES_URL", pytrace=False)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="PIPELINE_MANAGER_TEST_POSTGRES_URL is not set"),
]


@pytest.fixture
def app_config(app_config):
    """The usual test configuration, on PostgreSQL."""
    return {**app_config, "SQLALCHEMY_DATABASE_URI": PG_URL}


@pytest.fixture
def app(app_config):
    """An app on an empty PostgreSQL schema, built by the migrations."""
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    app = create_app(app_config)
    with app.app_context():
        upgrade()
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_migrations_build_the_schema_the_models_describe(app):
    with app.app_context():
        tables = set(sa.inspect(db.engine).get_table_names())
    assert set(db.metadata.tables) <= tables


def test_reset_walkthrough_on_postgres(running_pipeline, run_resets, tmp_path):
    api = running_pipeline
    token = api.reset()
    assert api.status(token).get_json()["phase"] == "queued"
    assert run_resets() == 1
    body = api.status(token).get_json()
    assert (body["status"], body["phase"]) == ("complete", "done")
    assert (tmp_path / "sinks" / "default" / "out" / "totals.jsonl").read_bytes() == b""
    api.action("orders", "stop")
    assert_error(api.status(token), 503, "PipelineNotRunning")
    api.action("orders", "start")
    body = assert_error(api.status(token), 410, "PipelineRestarted")
    assert body["details"] == {
        "pipeline_name": "orders",
        "token_incarnation": 1,
        "current_incarnation": 2,
    }


def test_concurrent_starts_begin_one_incarnation(app, api):
    api.create_pipeline()
    barrier = threading.Barrier(4)

    def start() -> None:
        with app.app_context():
            pipeline = pipelines.get_pipeline("default", "orders")
            barrier.wait()
            pipelines.start(pipeline)
            db.session.remove()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    body = api.client.get("/v0/pipelines/orders").get_json()
    assert (body["status"], body["incarnation"]) == ("running", 1)


def test_concurrent_reset_requests_queue_one_reset(app, running_pipeline, auth_headers):
    barrier = threading.Barrier(4)
    tokens: list[str] = []

    def request_reset() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post(
            "/v0/pipelines/orders/views/totals/connectors/sink1/reset", headers=auth_headers
        )
        assert r.status_code == 202, r.get_json()
        tokens.append(r.get_json()["reset_id"])

    threads = [threading.Thread(target=request_reset) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 4 and len(set(tokens)) == 1


def test_two_executors_do_each_reset_once(app, api, monkeypatch):
    api.create_pipeline()
    for i in range(6):
        api.add_file_connector(name=f"sink{i}", path=f"out/{i}.jsonl")
    api.action("orders", "start")
    for i in range(6):
        api.reset(connector=f"sink{i}")

    done: Counter[str] = Counter()
    original = FileTransport.reset

    def counting_reset(self, connector):
        done[connector.name] += 1
        original(self, connector)

    monkeypatch.setattr(FileTransport, "reset", counting_reset)

    def work(owner: str) -> None:
        with app.app_context():
            ResetExecutor(owner=owner).run_pending()
            db.session.remove()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert done == Counter({f"sink{i}": 1 for i in range(6)})


def test_unreachable_database_answers_503(app_config):
    app = create_app({**app_config, "SQLALCHEMY_DATABASE_URI": _closed_port_url()})
    # Checking the key is the first thing that needs the database.
    response = app.test_client().get(
        "/v0/pipelines/orders/reset_status?token=x",
        headers={"Authorization": "Bearer apikey:" + "k" * 43},
    )
    body = assert_error(response, 503, "ServiceUnavailable")
    assert response.headers["Retry-After"].isdigit()
    assert "psycopg" not in response.get_data(as_text=True)
    assert body["details"]["retry_after_seconds"] >= 1


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = sa.engine.make_url(PG_URL).set(host="127.0.0.1", port=port)
    return url.render_as_string(hide_password=False)
