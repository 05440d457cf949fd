"""Change-log compaction: what every connector has delivered goes, what anyone needs stays.

End to end where it can be: changes pushed through the API, the worker's units
of work run (resets, delivery, a compaction pass), and each sink folded and
compared with the view. One test runs a real ``flask worker`` process.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from app import worker
from app.connectors.models import Connector, SyncState
from app.delivery.worker import DeliveryWorker
from app.extensions import db
from app.resets.executor import ResetExecutor
from app.view_data import compaction
from app.view_data.models import ViewChange, ViewLog
from tests.faults import fold_file, start_worker, stop, view_multiset, wait_for

BATCH = 100
CHANGES = "/v0/pipelines/orders/views/totals/changes"
CONNECTORS = "/v0/pipelines/orders/views/totals/connectors"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Small compaction batches, small replay batches, short backoff."""
    return {
        **app_config,
        "COMPACTION_BATCH_SIZE": BATCH,
        "REPLAY_BATCH_SIZE": 100,
        "DELIVERY_RETRY_BASE_SECONDS": 0.01,
        "DELIVERY_RETRY_MAX_SECONDS": 0.01,
    }


def push(client, start: int, count: int) -> None:
    """Push ``count`` inserts of records numbered from ``start``, 250 a batch."""
    for first in range(start, start + count, 250):
        batch = [
            {"insert": {"id": i, "name": f"r{i}"}}
            for i in range(first, min(first + 250, start + count))
        ]
        r = client.post(CHANGES, json=batch)
        assert r.status_code == 200, r.get_json()


def run_worker(app: Flask) -> None:
    """What the worker loop does, until two rounds in a row find nothing to do.

    Resets, delivery, then a compaction pass (which may mark a connector as
    owing a snapshot: the next round queues its reset).
    """
    with app.app_context():
        executor = ResetExecutor("test-worker")
        delivery = DeliveryWorker(owner=executor.owner)
        idle = 0
        for _ in range(1000):
            busy = worker.run_once(executor, delivery)
            busy = compaction.compact() > 0 or busy
            idle = 0 if busy else idle + 1
            if idle == 2:
                break
        db.session.remove()


def deliver_a_little(app: Flask, rounds: int = 3, **kwargs: Any) -> None:
    """A few claims of a delivery worker (no compaction pass, no reset)."""
    with app.app_context():
        delivery = DeliveryWorker("d", **kwargs)
        for _ in range(rounds):
            delivery.run_once()
        db.session.remove()


def sink(app: Flask, name: str = "totals.jsonl") -> Path:
    """The path of a file sink of the default tenant."""
    return Path(app.config["SINK_DIR"]) / "default" / "out" / name


def view_id(app: Flask) -> int:
    with app.app_context():
        found = db.session.execute(sa.text("SELECT id FROM views")).scalar_one()
        db.session.remove()
        return found


def view(app: Flask) -> Counter:
    """The view's contents as a multiset of canonical records."""
    with app.app_context():
        contents = view_multiset(view_id(app))
        db.session.remove()
        return contents


def log_seqs(app: Flask) -> list[int]:
    """The seqs the view's change log holds."""
    with app.app_context():
        seqs = db.session.execute(sa.select(ViewChange.seq).order_by(ViewChange.seq)).scalars()
        found = list(seqs)
        db.session.remove()
        return found


def log_head(app: Flask) -> tuple[int, int]:
    """(compacted_seq, last_seq) of the view's log."""
    with app.app_context():
        row = db.session.execute(sa.select(ViewLog.compacted_seq, ViewLog.last_seq)).one()
        db.session.remove()
        return tuple(row)


def connector(app: Flask, name: str) -> Connector:
    with app.app_context():
        found = db.session.execute(sa.select(Connector).where(Connector.name == name)).scalar_one()
        db.session.expunge(found)
        db.session.remove()
        return found


def add_file(api, name: str) -> None:
    """Add file connector ``name`` to orders/totals, sink ``out/<name>.jsonl``."""
    api.add_file_connector(name=name, path=f"out/{name}.jsonl")


def add_hook(client, receiver) -> None:
    """Add http connector ``hook`` to orders/totals, sending to ``receiver`` (no retries)."""
    transport = {"name": "http", "config": {"url": receiver.url, "max_retries": 0}}
    r = client.post(CONNECTORS, json={"name": "hook", "transport": transport})
    assert r.status_code == 201, r.get_json()


# -- what goes -----------------------------------------------------------------------------


def test_rows_every_connector_delivered_are_removed(running_pipeline, client, app):
    running_pipeline.action("orders", "stop")
    add_file(running_pipeline, "sink2")
    running_pipeline.action("orders", "start")
    push(client, 0, 1000)
    run_worker(app)
    assert log_seqs(app) == []
    assert log_head(app) == (1000, 1000)
    for name in ("totals.jsonl", "sink2.jsonl"):
        assert fold_file(sink(app, name)) == view(app)

    # A whole batch at a time: 250 delivered, 200 go, 50 wait for the next 50.
    push(client, 1000, 250)
    run_worker(app)
    assert log_seqs(app) == list(range(1201, 1251))
    assert fold_file(sink(app)) == view(app)
    assert fold_file(sink(app, "sink2.jsonl")) == view(app)


def test_a_view_without_connectors_keeps_only_its_contents(api, client, app):
    api.create_pipeline()
    api.action("orders", "start")
    push(client, 0, 1000)
    client.post(CHANGES, json=[{"delete": {"id": 5, "name": "r5"}}])
    push(client, 1000, 98)
    run_worker(app)
    # 1099 changes: all but the last 99 (not a whole batch yet) are gone...
    assert log_seqs(app) == list(range(1001, 1100))
    expected = Counter({f'{{"id":{i},"name":"r{i}"}}': 1 for i in range(1098) if i != 5})
    assert view(app) == expected
    # ...and `flask views compact` removes the rest at once.
    result = app.test_cli_runner().invoke(args=["views", "compact", "--json"])
    assert result.exit_code == 0, result.output
    assert '"removed_rows": 99' in result.output
    assert log_seqs(app) == []
    assert view(app) == expected
    # The log goes on where it ended.
    r = client.post(CHANGES, json=[{"insert": {"id": "new"}}])
    assert (r.get_json()["first_seq"], r.get_json()["log_end"]) == (1100, 1100)


def test_compaction_goes_in_bounded_batches(api, client, app):
    api.create_pipeline()
    api.action("orders", "start")
    push(client, 0, 1000)
    deletes: list[str] = []

    def seen(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("DELETE FROM VIEW_CHANGES"):
            deletes.append(statement)

    with app.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", seen)
        try:
            removed = compaction.compact(max_batches=3)
            db.session.remove()
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", seen)
    assert removed == 3 * BATCH
    assert len(deletes) == 3
    assert log_seqs(app) == list(range(301, 1001))


# -- what stays ----------------------------------------------------------------------------


def test_a_failed_connector_keeps_the_log_behind_it(api, client, app, receiver):
    api.create_pipeline()
    add_file(api, "sink1")
    add_hook(client, receiver)
    api.action("orders", "start")
    push(client, 0, 300)
    run_worker(app)
    assert log_seqs(app) == []
    receiver.refuse(400)  # the hook fails for good (until a reset), at seq 300
    push(client, 300, 500)
    run_worker(app)
    assert connector(app, "hook").sync_state == SyncState.FAILED
    assert log_seqs(app) == list(range(301, 801))  # sink1 has it all; the hook does not
    assert fold_file(sink(app, "sink1.jsonl")) == view(app)

    receiver.refuse(None)
    api.reset(connector="hook")
    run_worker(app)
    assert receiver.contents(str(connector(app, "hook").uid)) == view(app)
    assert log_seqs(app) == []


def test_an_http_batch_in_flight_is_kept_until_acknowledged(api, client, app, receiver):
    api.create_pipeline()
    add_hook(client, receiver)
    api.action("orders", "start")
    push(client, 0, 1000)
    deliver_a_little(app, rounds=1, batch_size=400, max_batches=1)
    receiver.fail_next(1)
    deliver_a_little(app, rounds=1, batch_size=400, max_batches=1)
    found = connector(app, "hook")
    position = (found.delivered_seq, found.inflight_first_seq, found.inflight_last_seq)
    assert position == (400, 401, 800)
    with app.app_context():
        assert compaction.compact() == 400
        db.session.remove()
    assert log_seqs(app) == list(range(401, 1001))  # the batch in flight is all there

    # Resent as it was, then the rest: the receiver ends with the view, the log empty.
    run_worker(app)
    assert receiver.contents(str(found.uid)) == view(app)
    assert receiver.violations == []
    assert log_seqs(app) == []


# A file sink stages its snapshot: its position stays at 600 until the switch, so
# that a cancelled reset streams on from there; nothing before it may go.
@pytest.mark.parametrize(("moment", "removed"), [("_reset_sink", 0), ("_replay", 0)])
def test_rows_after_a_running_resets_snapshot_are_kept(
    running_pipeline, client, app, monkeypatch, moment, removed
):
    """Changes pushed while a reset is under way, then compaction: none after S is lost.

    The reset of sink1 snapshots the view at S = 750. Until its staged file is
    switched in, sink1 stays at 600 (a cancel leaves it there). Meanwhile 450
    changes come, sink2 delivers them and a pass runs.
    """
    running_pipeline.action("orders", "stop")
    add_file(running_pipeline, "sink2")
    running_pipeline.action("orders", "start")
    push(client, 0, 600)
    run_worker(app)
    push(client, 600, 150)
    running_pipeline.reset(connector="sink1")
    original = getattr(ResetExecutor, moment)
    passes = []

    def meanwhile(self, *args, **kwargs):
        if not passes:
            push(client, 750, 450)
            with app.app_context():
                DeliveryWorker("other").run_pending()
                passes.append(compaction.compact())
                db.session.remove()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ResetExecutor, moment, meanwhile)
    with app.app_context():
        assert ResetExecutor("r").run_pending() == 1
        db.session.remove()
    assert passes == [removed]
    assert log_seqs(app) == list(range(601 + removed, 1201))
    monkeypatch.undo()
    run_worker(app)
    assert len(view(app)) == 1200
    assert fold_file(sink(app)) == view(app)
    assert fold_file(sink(app, "sink2.jsonl")) == view(app)
    assert log_seqs(app) == []


# -- connectors that come later ------------------------------------------------------------


def test_a_connector_added_after_compaction_gets_a_snapshot_then_the_stream(
    running_pipeline, client, app
):
    push(client, 0, 1000)
    client.post(CHANGES, json=[{"delete": {"id": 7, "name": "r7"}}])
    run_worker(app)
    assert log_head(app) == (1000, 1001)
    running_pipeline.action("orders", "stop")
    add_file(running_pipeline, "late")
    running_pipeline.action("orders", "start")
    push(client, 1000, 30)

    # Before the worker's reset, delivery gives it nothing from a log that starts
    # after it (delivery itself may find the gap and mark it, or a pass does).
    deliver_a_little(app, rounds=4)
    late = connector(app, "late")
    assert late.delivered_seq == 0
    assert late.sync_state in (SyncState.IN_SYNC, SyncState.RESETTING)
    assert fold_file(sink(app, "late.jsonl")) == Counter()

    run_worker(app)
    late = connector(app, "late")
    assert late.sync_state == SyncState.IN_SYNC
    assert fold_file(sink(app, "late.jsonl")) == view(app)
    assert fold_file(sink(app)) == view(app)
    stats = client.get(f"{CONNECTORS}/late/stats").get_json()
    assert (stats["sync_state"], stats["resets"]["last_origin"]) == ("in_sync", "redo")

    push(client, 1030, 5)
    run_worker(app)
    assert fold_file(sink(app, "late.jsonl")) == view(app)


def test_the_worker_process_compacts(running_pipeline, client, app, app_config, tmp_path):
    push(client, 0, 1000)
    settings = {k: v for k, v in app_config.items() if k != "TESTING"}
    settings["COMPACTION_INTERVAL_SECONDS"] = 0.1
    process = start_worker(settings, tmp_path / "worker.log")
    try:
        wait_for(lambda: log_seqs(app) == [], timeout=60, what="the log to be compacted")
        assert fold_file(sink(app)) == view(app)
    finally:
        stop(process)
