"""A real ``flask worker`` process killed with SIGKILL mid-delivery and mid-replay loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import create_app
from app.connectors import service as connectors
from app.connectors.models import Connector
from app.delivery.sinks import target_of
from app.extensions import db
from app.pipelines import service as pipelines
from app.resets import service as resets
from app.resets.models import Reset, ResetStatus
from app.transports.file import FileTransport
from app.view_data import service as view_data
from app.view_data import store

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))
LEASE_SECONDS = 1

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tmp_path):
    """A database file with a running pipeline and a file connector; its app and settings."""
    settings = {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'crash.db'}",
        "SINK_DIR": str(tmp_path / "sinks"),
        "SECRET_KEY": "crash-test",
        "BACKGROUND_WORKER": False,
        "WORKER_LEASE_SECONDS": LEASE_SECONDS,
        "WORKER_POLL_INTERVAL": 0.05,
        "DELIVERY_BATCH_SIZE": 40,
        "REPLAY_BATCH_SIZE": 40,
    }
    app = create_app({"TESTING": True, **settings})
    with app.app_context():
        db.create_all()
        pipeline = pipelines.create_pipeline("default", "orders", views=["totals"])
        connectors.add_connector(
            pipeline, "totals", "sink1", {"name": "file", "config": {"path": "totals.jsonl"}}
        )
        pipelines.start(pipeline)
        connector = db.session.execute(sa.select(Connector)).scalar_one()
        sink = FileTransport().path_of(target_of(connector))
        db.session.remove()
    yield app, settings, sink, tmp_path
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def push(app, changes: list[dict]) -> None:
    """Push a batch of changes to orders/totals."""
    with app.app_context():
        view = view_data.writable_view(pipelines.get_pipeline("default", "orders"), "totals")
        view_data.push_changes(view, view_data.parse_changes(json.dumps(changes).encode()))
        db.session.remove()


def start_worker(settings: dict, log: Path) -> subprocess.Popen:
    """Start ``flask worker`` in a process of its own, configured through the environment."""
    env = {**os.environ, **{f"PIPELINE_MANAGER_{k}": str(v) for k, v in settings.items()}}
    env["PIPELINE_MANAGER_BACKGROUND_WORKER"] = "false"
    with open(log, "ab") as out:
        return subprocess.Popen(
            [FLASK, "--app", "wsgi", "worker"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def connector_state(app) -> tuple[int, int, int]:
    """(delivered_seq, committed_length, log end) of the connector."""
    with app.app_context():
        connector = db.session.execute(sa.select(Connector)).scalar_one()
        state = (connector.delivered_seq, connector.committed_length)
        end = store.log_end(connector.view_id)
        db.session.remove()
    return (*state, end)


def wait_for(condition, timeout: float = 60, what: str = "the worker") -> None:
    """Poll until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kill(worker: subprocess.Popen) -> None:
    """SIGKILL: no handler, no cleanup, leases left taken."""
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)


def stop(worker: subprocess.Popen) -> None:
    """Stop a worker the polite way."""
    worker.send_signal(signal.SIGINT)
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        kill(worker)


def lines(sink: Path) -> list[dict]:
    """The file sink's lines."""
    return [json.loads(line) for line in sink.read_text().splitlines()]


def test_killed_worker_resumes_from_the_durable_offset_exactly_once(setup):
    app, settings, sink, tmp_path = setup
    total = 6000
    expected = [{"insert": {"id": i, "pad": "x" * 40}} for i in range(total)]
    for start in range(0, total, 500):
        push(app, expected[start : start + 500])
    rng = random.Random(4)
    cut_back = 0
    for round_ in range(4):
        worker = start_worker(settings, tmp_path / "worker.log")
        delivered = connector_state(app)[0]
        target = min(total - 1, delivered + rng.randint(200, 1200))
        wait_for(lambda t=target: connector_state(app)[0] >= t, what=f"round {round_}")
        time.sleep(rng.random() * 0.05)
        kill(worker)
        if sink.stat().st_size > connector_state(app)[1]:
            cut_back += 1  # killed between writing a batch and recording it
        # The dead worker's lease has to run out before anyone takes over.
        time.sleep(LEASE_SECONDS + 0.1)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_for(lambda: connector_state(app)[0] == total, what="the last worker")
    finally:
        stop(worker)
    assert lines(sink) == expected
    assert connector_state(app)[1] == sink.stat().st_size
    print(f"kills that left an unrecorded batch in the file: {cut_back} of 4")


def test_reset_killed_mid_replay_finishes_on_restart(setup):
    app, settings, sink, tmp_path = setup
    push(app, [{"insert": {"id": i}} for i in range(3000)])
    push(app, [{"delete": {"id": i}} for i in range(0, 3000, 3)])
    with app.app_context():
        reset = resets.request_reset(pipelines.get_pipeline("default", "orders"), "totals", "sink1")
        reset_id = reset.id
        db.session.remove()

    def reset_state() -> tuple[str, int]:
        with app.app_context():
            found = db.session.get(Reset, reset_id, populate_existing=True)
            db.session.remove()
            return found.status, found.replayed_records

    worker = start_worker(settings, tmp_path / "worker.log")
    wait_for(lambda: reset_state()[1] >= 400, what="the replay")
    kill(worker)
    assert reset_state() == (ResetStatus.IN_PROGRESS, reset_state()[1])
    time.sleep(LEASE_SECONDS + 0.1)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_for(lambda: reset_state()[0] == ResetStatus.COMPLETE, what="the reset")
        push(app, [{"insert": {"id": "after"}}])
        wait_for(lambda: connector_state(app)[0] == connector_state(app)[2], what="catch-up")
    finally:
        stop(worker)
    with app.app_context():
        reset = db.session.get(Reset, reset_id)
        assert reset.status == ResetStatus.COMPLETE
        assert reset.snapshot_records == reset.replayed_records == 2000
        db.session.remove()
    found = lines(sink)
    assert all("insert" in line for line in found)
    expected = Counter(json.dumps({"id": i}) for i in range(3000) if i % 3)
    expected[json.dumps({"id": "after"})] += 1
    assert Counter(json.dumps(line["insert"]) for line in found) == expected
    assert found[-1] == {"insert": {"id": "after"}}


def test_two_worker_processes_at_once_deliver_each_change_once(setup):
    app, settings, sink, tmp_path = setup
    total = 4000
    expected = [{"insert": {"id": i}} for i in range(total)]
    workers = [start_worker(settings, tmp_path / f"worker{n}.log") for n in range(2)]
    try:
        for start in range(0, total, 250):
            push(app, expected[start : start + 250])
        wait_for(lambda: connector_state(app)[0] == total, what="both workers")
    finally:
        for worker in workers:
            stop(worker)
    assert lines(sink) == expected


def test_sigterm_lets_the_worker_finish_its_batch_and_give_its_lease_back(setup):
    app, settings, sink, tmp_path = setup
    long_lease = {**settings, "WORKER_LEASE_SECONDS": 60, "DELIVERY_BATCH_SIZE": 20}
    total = 4000
    expected = [{"insert": {"id": i, "pad": "y" * 40}} for i in range(total)]
    for start in range(0, total, 500):
        push(app, expected[start : start + 500])
    worker = start_worker(long_lease, tmp_path / "worker.log")
    wait_for(lambda: connector_state(app)[0] >= 200, what="delivery to start")
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    worker.wait(timeout=30)
    assert time.monotonic() - started < 20  # well within a gunicorn-like graceful timeout
    with app.app_context():
        connector = db.session.execute(sa.select(Connector)).scalar_one()
        owner, committed = connector.lease_owner, connector.committed_length
        db.session.remove()
    assert owner is None, "the lease was left to expire"
    assert sink.stat().st_size == committed  # stopped between batches, nothing half-written
    # The next worker goes on at once, not after the 60 s lease.
    heir = start_worker(long_lease, tmp_path / "worker.log")
    try:
        wait_for(lambda: connector_state(app)[0] == total, timeout=30, what="the next worker")
    finally:
        stop(heir)
    assert lines(sink) == expected
