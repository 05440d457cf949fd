"""Table sinks under faults: real ``flask worker`` processes writing a PostgreSQL table.

The fault cases of ``tests/test_faults.py`` (SIGSTOP past the lease and SIGKILL,
mid-batch and mid-reset, a stop mid-replay, a sink changed or locked behind
the service's back), with the ``postgres`` transport. Each test ends the same
way: the sink table holds exactly the view (as a multiset of records), the
connector is in sync and healthy, and no staging table is left.
"""

# ruff: noqa: S608 (the statements name a schema the fixture made, never input)

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.faults import canonical, kill, pause_when, resume_process, wait_for
from tests.test_faults import LEASE, Cluster, Workload
from tests.test_faults import app_config as app_config
from tests.test_postgres_sink import SINK_DSN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SINK_DSN, reason="no PostgreSQL server for sink tables"),
]


class TableCluster(Cluster):
    """The fault tests' cluster, with a sink table in a schema of its own."""

    def __init__(self, *args: Any, schema: str) -> None:
        super().__init__(*args)
        self.schema = schema

    def sql(self, statement: str, *params: Any) -> list[tuple]:
        assert SINK_DSN is not None
        with psycopg.connect(SINK_DSN, autocommit=True) as conn:
            cursor = conn.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    def table_pipeline(self) -> None:
        """A running pipeline ``orders`` whose connector ``sink1`` writes ``<schema>.totals``."""
        self.sql(f'CREATE TABLE "{self.schema}".totals (id integer NOT NULL, note text)')
        self.create()
        transport = {
            "name": "postgres",
            "config": {"dsn_env": "SINK_DSN_FAULTS", "table": f"{self.schema}.totals"},
        }
        body = {"name": "sink1", "transport": transport}
        self.call("POST", self.connectors_url("orders"), "default", 201, json=body)
        self.action("orders", "start")

    def table(self) -> Counter:
        rows = self.sql(f'SELECT id, note FROM "{self.schema}".totals')
        return Counter(canonical({"id": i, "note": n}) for i, n in rows)

    def staging_tables(self) -> list[str]:
        return [
            name
            for (name,) in self.sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                self.schema,
                "%__pm_reset_%",
            )
        ]

    def sink_position(self) -> int | None:
        uid = str(self.connector()["uid"])
        found = self.sql(
            f'SELECT seq FROM "{self.schema}".pipeline_manager_progress WHERE connector_uid = %s',
            uid,
        )
        return found[0][0] if found else None

    def assert_table_is_view(self) -> None:
        stats = self.stats()
        assert (stats["sync_state"], stats["health"]) == ("in_sync", "healthy"), stats
        assert stats["delivered_seq"] == stats["log_end"], stats
        assert stats["sink_version"] is not None
        assert self.table() == self.view()
        assert self.sink_position() == stats["delivered_seq"]
        assert self.staging_tables() == []


@pytest.fixture
def cluster(app, app_config, make_key, tmp_path, monkeypatch) -> Iterator[TableCluster]:
    assert SINK_DSN is not None
    monkeypatch.setenv("SINK_DSN_FAULTS", SINK_DSN)  # the API and the workers read it
    schema = f"f_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SINK_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    cluster = TableCluster(app, app_config, make_key, tmp_path, schema=schema)
    try:
        yield cluster
    finally:
        cluster.close()
        with psycopg.connect(SINK_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_worker_stopped_past_its_lease_mid_batch_lands_nothing_twice(cluster):
    c = cluster
    c.table_pipeline()
    work = Workload(11)
    c.push(work.batch(1500))
    a = c.worker(DELIVERY_BATCH_SIZE=5)
    wait_for(lambda: c.stats()["delivered_seq"] >= 200, what="delivery to get under way")
    # Stopped wherever it is: maybe inside a sink transaction, holding the progress row.
    a.send_signal(19)  # SIGSTOP
    paused = c.stats()
    assert paused["delivered_seq"] < paused["log_end"], "delivery ended before the stop"

    c.worker(DELIVERY_BATCH_SIZE=43)
    c.wait_caught_up()
    taken = c.stats()
    assert taken["epoch"] > paused["epoch"]
    before = c.table()
    resume_process(a)
    time.sleep(2 * LEASE)
    assert c.table() == before
    assert c.stats()["delivered_seq"] == taken["delivered_seq"]

    c.push(work.batch(300))
    c.wait_caught_up()
    c.assert_table_is_view()


def test_a_batch_the_sink_committed_but_the_service_did_not_record_is_not_applied_again(cluster):
    """A SIGKILL between the sink's commit and the service's: the next worker catches up."""
    from app.delivery import reader, sinks
    from app.extensions import db
    from app.transports import get_transport

    c = cluster
    c.table_pipeline()
    work = Workload(12)
    c.push(work.batch(400))
    a = c.worker()
    c.wait_caught_up()
    kill(a)
    c.push(work.batch(100))
    # What a killed worker leaves: the next batch in the sink, its record not here.
    with c.app.app_context():
        from app.connectors.models import Connector

        connector = db.session.get(Connector, c.connector()["id"])
        target = sinks.target_of(connector)
        rows = reader.read_log(target.view_id, connector.delivered_seq, 60)
        db.session.rollback()
        get_transport("postgres").apply(target, rows, epoch=connector.lease_epoch)
        db.session.remove()
    assert c.sink_position() == c.stats()["delivered_seq"] + 60

    c.worker()
    c.wait_caught_up()
    c.assert_table_is_view()


def test_executor_stopped_past_its_lease_cannot_switch_its_snapshot_in(cluster):
    c = cluster
    c.table_pipeline()
    work = Workload(13)
    c.push(work.batch(1500))
    a = c.worker(REPLAY_BATCH_SIZE=5)
    c.wait_caught_up()
    token = c.reset()
    wait_for(lambda: c.status(token)["replayed_records"] >= 100, what="the replay")
    pause_when(a, lambda: c.holder_pid() == a.pid and c.locks_free())
    paused = c.status(token)
    assert (paused["status"], paused["phase"]) == ("inprogress", "replaying_snapshot")
    assert c.stats()["sync_state"] == "resetting"
    assert len(c.staging_tables()) == 1

    c.worker(REPLAY_BATCH_SIZE=43)
    wait_for(lambda: c.status(token)["status"] == "complete", what="the reset")
    done = c.status(token)
    assert done["attempts"] == 2
    before = c.table()
    resume_process(a)
    time.sleep(2 * LEASE)
    assert c.table() == before
    assert c.status(token) == done

    c.push(work.batch(300))
    c.wait_caught_up()
    c.assert_table_is_view()


def test_worker_killed_mid_reset_leaves_the_old_rows_until_the_next_one_switches_in(cluster):
    c = cluster
    c.table_pipeline()
    work = Workload(14)
    c.push(work.batch(1200))
    a = c.worker(REPLAY_BATCH_SIZE=5)
    c.wait_caught_up()
    before_reset = c.table()
    token = c.reset()
    wait_for(lambda: c.status(token)["replayed_records"] >= 150, what="the replay")
    kill(a)
    assert c.stats()["sync_state"] == "resetting"
    assert c.table() == before_reset  # readers still see the old rows
    assert c.staging_tables() != []

    c.worker()
    wait_for(lambda: c.status(token)["status"] == "complete", what="the reset")
    assert c.status(token)["attempts"] == 2
    c.push(work.batch(300))
    c.wait_caught_up()
    c.assert_table_is_view()


def test_stop_mid_replay_then_start_redoes_the_reset(cluster):
    c = cluster
    c.table_pipeline()
    work = Workload(15)
    c.push(work.batch(1200))
    c.worker(REPLAY_BATCH_SIZE=5)
    c.wait_caught_up()
    token = c.reset()
    wait_for(lambda: c.status(token)["replayed_records"] >= 100, what="the replay")
    c.action("orders", "stop")
    before_start = c.table()
    assert c.stats()["sync_state"] == "resetting"
    c.action("orders", "start")
    assert c.reset_status(token).status_code == 410
    seen = c.watch(lambda s: s["sync_state"] == "in_sync")
    assert all(s["health"] != "healthy" for s in seen if s["sync_state"] != "in_sync")
    resets = seen[-1]["resets"]
    assert (resets["last_origin"], resets["count"], resets["completed"]) == ("redo", 2, 1)
    assert before_start != Counter()
    c.push(work.batch(200))
    c.wait_caught_up()
    c.assert_table_is_view()


def test_rows_removed_behind_the_service_are_reported_then_redone(cluster):
    c = cluster
    c.table_pipeline()
    work = Workload(16)
    c.push(work.batch(600))
    c.worker()
    c.wait_caught_up()
    c.sql(f'DELETE FROM "{c.schema}".totals')
    # Deletes that find no row: the sink no longer holds the view.
    c.push([{"delete": r} for r in work.live[:5]])
    work.live = work.live[5:]
    wait_for(lambda: c.stats()["resets"]["completed"] >= 1, what="the redo")
    stats = c.stats()
    assert stats["resets"]["last_origin"] == "redo"
    assert "lacks 5 row(s)" in stats["last_error"]
    c.push(work.batch(100))
    c.wait_caught_up()
    c.assert_table_is_view()


def test_a_sink_table_locked_by_another_session_is_retried_then_catches_up(cluster):
    """A hung sink: the table is locked; each attempt gives up after a third of the lease."""
    c = cluster
    c.table_pipeline()
    work = Workload(17)
    c.push(work.batch(300))
    c.worker()
    c.wait_caught_up()
    assert SINK_DSN is not None
    with psycopg.connect(SINK_DSN) as blocker:
        blocker.execute(f'LOCK TABLE "{c.schema}".totals IN ACCESS EXCLUSIVE MODE')
        c.push(work.batch(100))
        seen = c.watch(lambda s: s["consecutive_failures"] >= 2)
        assert seen[-1]["health"] == "failing"
        assert "timeout" in (seen[-1]["last_error"] or "")
        blocker.rollback()
    c.wait_caught_up()
    c.assert_table_is_view()
