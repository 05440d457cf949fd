"""The same code on a real PostgreSQL server: migrations, lifecycle, resets, claims.

Set PIPELINE_MANAGER_TEST_POSTGRES_URL (``.ci/postgres.sh`` starts a server and
prints one). Without it these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from app import create_app
from app.database import utcnow
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
    original = FileTransport.staging

    def counting_reset(self, connector, epoch):
        done[connector.name] += 1
        return original(self, connector, epoch)

    monkeypatch.setattr(FileTransport, "staging", counting_reset)

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


FAKETIME = shutil.which("faketime")


@pytest.mark.skipif(
    not FAKETIME and not os.environ.get("CI"), reason="needs faketime (apt-get install faketime)"
)
def test_a_host_whose_clock_runs_45s_fast_cannot_take_a_live_lease(app, app_config, tmp_path):
    from app.connectors import service as connectors
    from app.connectors.models import Connector
    from app.delivery import leases
    from app.view_data import service as view_data
    from tests.faults import FLASK, ROOT, wait_for, worker_env

    with app.app_context():
        pipeline = pipelines.create_pipeline("default", "orders", views=["totals"])
        connectors.add_connector(
            pipeline, "totals", "sink1", {"name": "file", "config": {"path": "t.jsonl"}}
        )
        pipelines.start(pipeline)
        connector_id = db.session.execute(sa.select(Connector.id)).scalar_one()
        # This host holds the connector's lease for 20 s more, by the database's clock.
        lease = leases.take(connector_id, "this-host", 20)
        db.session.commit()
        view = view_data.writable_view(pipeline, "totals")
        view_data.push_changes(view, view_data.parse_changes(b'[{"insert": {"id": 1}}]'))
        db.session.remove()

    def state() -> tuple[int, int]:
        with app.app_context():
            row = db.session.execute(
                sa.select(Connector.lease_epoch, Connector.delivered_seq)
            ).one()
            db.session.remove()
        return row[0], row[1]

    settings = {
        **{k: v for k, v in app_config.items() if k != "TESTING"},
        "WORKER_POLL_INTERVAL": 0.05,
    }
    skewed = subprocess.run(
        [FAKETIME, "-f", "+45s", sys.executable, "-c", "import time; print(time.time())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert float(skewed.stdout) - time.time() > 40, "faketime did not shift the clock"
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 (closed below)
    worker = subprocess.Popen(
        [FAKETIME, "-f", "+45s", FLASK, "--app", "wsgi", "worker"],
        cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
        # Only the wall clock is off (Python's thread waits need a true monotonic clock).
        env={**worker_env(settings), "FAKETIME_DONT_FAKE_MONOTONIC": "1"},
    )  # fmt: skip
    try:
        time.sleep(3)  # a fast clock would see the lease as long expired
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert state() == (lease.epoch, 0), "the skewed worker took a live lease"
        # The control: once the lease is given back, the same worker delivers at once.
        with app.app_context():
            assert leases.release(lease)
            db.session.remove()
        wait_for(lambda: state()[1] == 1, timeout=20, what="the skewed worker to deliver")
        assert state()[0] == lease.epoch + 1
    finally:
        # faketime runs the worker as its child: stop the whole process group.
        os.killpg(worker.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()


def test_a_hot_read_leaves_its_pooled_connection_in_transactions(app) -> None:
    """Hot reads run in autocommit (no BEGIN/ROLLBACK round trips), then give the
    connection back as the pool lent it: later work on it is transactional again."""
    from app.health import _PING
    from app.pipelines.models import Pipeline

    with app.app_context():
        engine = db.engine
        engine.dispose()  # one pooled connection: the read's is the next user's
        assert _PING.first(engine, {}) == (1,)
        raw = engine.raw_connection()
        try:
            assert raw.dbapi_connection.autocommit is False
        finally:
            raw.close()
        with engine.connect() as conn:
            conn.execute(
                sa.insert(Pipeline.__table__).values(
                    id=uuid.uuid4(),
                    tenant="t",
                    name="p",
                    description="",
                    status="stopped",
                    incarnation=0,
                    created_at=utcnow(),
                    status_since=utcnow(),
                )
            )
            conn.rollback()
            assert conn.execute(sa.select(sa.func.count()).select_from(Pipeline)).scalar() == 0


def test_requests_on_connections_the_server_dropped_answer_json(app, tmp_path):
    """A PostgreSQL restart drops every pooled connection of a served gunicorn: the
    requests that meet a dead connection answer the service's JSON (503 with Retry-After,
    or 200 on a fresh one), never gunicorn's bare 500 from a rollback failing at teardown."""
    import requests

    from tests import faults

    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    settings = {"SQLALCHEMY_DATABASE_URI": PG_URL, "DELIVERY_PROCESSES": 0}
    with app.app_context():
        from app.auth import service as auth_service

        _, key = auth_service.create_key("default", "reader", "read")
        db.session.remove()
        db.engine.dispose()
    with faults.served(tmp_path, settings, workers=1) as (base, _env):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        paths = ["/healthz", "/readyz", "/v0/pipelines", "/v0/pipelines/nope"]
        for _ in range(4):  # every thread's pooled connection is made
            for path in paths:
                assert session.get(f"{base}{path}", timeout=10).status_code < 500
        killer = sa.create_engine(PG_URL)
        with killer.begin() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        killer.dispose()
        answers = [session.get(f"{base}{path}", timeout=10) for _ in range(4) for path in paths]
    for r in answers:
        assert r.headers["Content-Type"].startswith("application/json"), r.text[:200]
        assert r.status_code in (200, 404, 503), r.text[:200]
        if r.status_code == 503:
            assert r.json()["error_code"] == "ServiceUnavailable" and r.headers["Retry-After"]
