"""Table sinks under faults: real ``flask worker`` processes writing PostgreSQL and Delta tables.

The fault cases of ``tests/test_faults.py`` (SIGSTOP past the lease and SIGKILL,
mid-batch and mid-reset, a stop mid-replay, a sink changed or locked behind
the service's back), with the ``postgres`` and ``delta`` transports, the
latter in its three layouts (``delta``: a change table of JSON records;
``delta-typed``: a change table of declared, typed columns; ``delta-rows``:
typed columns keyed by ``id``, one MERGE per batch, fed a view keyed so). Each
test ends the same way: the sink table holds exactly the view
(as a multiset of records; a Delta change table folded), the position the
sink recorded is the connector's, the connector is in sync and healthy, and
no staging copy is left.
"""

# ruff: noqa: S608 (the statements name a schema the fixture made, never input)

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults import canonical, kill, pause_when, resume_process, wait_for
from tests.test_faults import LEASE, NOTES, Cluster, Workload
from tests.test_faults import app_config as app_config
from tests.test_postgres_sink import SINK_DSN

pytestmark = pytest.mark.slow

DELTA_PATH = "tables/totals"
# The records' fields (tests.test_faults.Workload's and KeyedWorkload's) as typed columns.
DELTA_COLUMNS = {"id": "long", "note": "string"}
# The reset tests stop or kill a worker mid-replay: a snapshot of about 2,800
# records replayed 1 at a time (some 2,800 fenced commits) is still under way
# when they act, even where a table sink takes each batch in a millisecond and
# the replay reads its next page while it writes (2 at a time, a loaded machine
# once saw the replay end before any of 200 stops found it mid-way).
RESET_CHANGES = 4000
SLOW_REPLAY_BATCH = 1


class KeyedWorkload(Workload):
    """Valid batches of a view keyed by ``id``: new records, deletes, updates (delete, insert)."""

    def batch(self, n: int) -> list[dict]:
        changes: list[dict] = []
        while len(changes) < n:
            roll = self.rng.random()
            if roll < 0.4 and self.live:
                i = self.rng.randrange(len(self.live))
                self.live[i], self.live[-1] = self.live[-1], self.live[i]
                old = self.live.pop()
                changes.append({"delete": old})
                if roll < 0.2:  # an update: the same key, another note
                    new = {"id": old["id"], "note": f"{old['note']}'"[-20:]}
                    self.live.append(new)
                    changes.append({"insert": new})
                continue
            record = {"id": self.next_id, "note": NOTES[self.next_id % len(NOTES)]}
            self.next_id += 1
            self.live.append(record)
            changes.append({"insert": record})
        return changes


class TableCluster(Cluster):
    """The fault tests' cluster, with one table sink: ``postgres`` or a ``delta`` kind."""

    def __init__(self, *args: Any, kind: str, schema: str) -> None:
        super().__init__(*args)
        self.kind = kind
        self.schema = schema
        # The transport: "delta-typed" and "delta-rows" are the delta transport with
        # declared columns, in mode changes and in mode rows.
        self.transport = kind.partition("-")[0]

    def workload(self, seed: int) -> Workload:
        """The changes a test pushes: keyed by id for a keyed table."""
        return KeyedWorkload(seed) if self.kind == "delta-rows" else Workload(seed)

    def sql(self, statement: str, *params: Any) -> list[tuple]:
        assert SINK_DSN is not None
        with psycopg.connect(SINK_DSN, autocommit=True) as conn:
            cursor = conn.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    @property
    def delta_path(self) -> Path:
        return Path(self.settings["SINK_DIR"]).resolve() / "default" / DELTA_PATH

    def table_pipeline(self) -> None:
        """A running pipeline ``orders`` whose connector ``sink1`` writes the table sink."""
        if self.kind == "postgres":
            self.sql(f'CREATE TABLE "{self.schema}".totals (id integer NOT NULL, note text)')
            config = {"dsn_env": "SINK_DSN_FAULTS", "table": f"{self.schema}.totals"}
        elif self.kind == "delta-rows":
            config = {"path": DELTA_PATH, "mode": "rows", "columns": DELTA_COLUMNS, "key": ["id"]}
        elif self.kind == "delta-typed":
            config = {"path": DELTA_PATH, "columns": DELTA_COLUMNS}
        else:
            config = {"path": DELTA_PATH}
        self.create()
        body = {"name": "sink1", "transport": {"name": self.transport, "config": config}}
        self.call("POST", self.connectors_url("orders"), "default", 201, json=body)
        self.action("orders", "start")

    def table(self) -> Counter:
        """The sink's contents as a multiset of canonical records."""
        if self.kind == "postgres":
            rows = self.sql(f'SELECT id, note FROM "{self.schema}".totals')
            return Counter(canonical({"id": i, "note": n}) for i, n in rows)
        from deltalake import DeltaTable

        if not self.delta_path.exists():
            return Counter()
        data = DeltaTable(str(self.delta_path)).to_pyarrow_dataset().to_table(use_threads=False)
        if self.kind == "delta-rows":
            keys = Counter(data["id"].to_pylist())
            assert not [k for k, n in keys.items() if n > 1], "a key twice in a keyed table"
            return Counter(canonical(row) for row in data.to_pylist())
        if self.kind == "delta-typed":  # the record is its columns
            fields = [name for name in data.column_names if name not in ("seq", "op")]
            records = [
                canonical({k: v for k, v in row.items() if v is not None})
                for row in data.select(fields).to_pylist()
            ]
        else:
            records = data["record"].to_pylist()
        # Files come in no set order: the change-log order is the seq (a snapshot's rows
        # share one seq, and are all inserts).
        changes = sorted(
            zip(data["seq"].to_pylist(), data["op"].to_pylist(), records, strict=True),
            key=lambda change: (change[0], change[1] != "insert"),
        )
        folded: Counter = Counter()
        for _seq, op, record in changes:
            folded[record] += 1 if op == "insert" else -1
            assert folded[record] >= 0, f"a delete before its insert: {record}"
        return +folded

    def staging_tables(self) -> list[str]:
        if self.transport == "delta":
            parent = self.delta_path.parent
            return sorted(p.name for p in parent.glob(f".{self.delta_path.name}.reset-*"))
        return [
            name
            for (name,) in self.sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                self.schema,
                "\\_pm\\_reset\\_%",
            )
        ]

    def sink_position(self) -> int | None:
        uid = str(self.connector()["uid"])
        if self.transport == "delta":
            from deltalake import DeltaTable

            return DeltaTable(str(self.delta_path)).transaction_version(uid)
        found = self.sql(
            f'SELECT seq FROM "{self.schema}".pipeline_manager_progress WHERE connector_uid = %s',
            uid,
        )
        return found[0][0] if found else None

    def delta_version(self) -> int:
        from deltalake import DeltaTable

        return DeltaTable(str(self.delta_path)).version()

    def damage(self) -> None:
        """Change the sink behind the service's back: its rows, or its whole table, gone."""
        if self.kind == "postgres":
            self.sql(f'DELETE FROM "{self.schema}".totals')
        else:
            shutil.rmtree(self.delta_path)

    def assert_table_is_view(self, redos: int = 0) -> None:
        """The sink equals the view, in sync, with ``redos`` automatic re-snapshots.

        A redo heals any divergence (a batch applied twice, then a delete that
        finds no row), so the count is checked too: a fault that the sink's own
        exactly-once handling should absorb must cost no snapshot.
        """
        origins = [reset["origin"] for reset in self.resets()]
        assert origins.count("redo") == redos, origins
        stats = self.stats()
        assert (stats["sync_state"], stats["health"]) == ("in_sync", "healthy"), stats
        assert stats["delivered_seq"] == stats["log_end"], stats
        assert stats["sink_version"] is not None
        assert self.table() == self.view()
        assert self.sink_position() == stats["delivered_seq"]
        assert self.staging_tables() == []


KINDS = [
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(not SINK_DSN, reason="no PostgreSQL server for sink tables"),
    ),
    "delta",
    "delta-typed",
    "delta-rows",
]


@pytest.fixture(params=KINDS)
def cluster(request, app, app_config, make_key, tmp_path, monkeypatch) -> Iterator[TableCluster]:
    kind = request.param
    schema = f"f_{uuid.uuid4().hex[:12]}"
    if kind == "postgres":
        assert SINK_DSN is not None
        monkeypatch.setenv("SINK_DSN_FAULTS", SINK_DSN)  # the API and the workers read it
        with psycopg.connect(SINK_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    cluster = TableCluster(app, app_config, make_key, tmp_path, kind=kind, schema=schema)
    try:
        yield cluster
    finally:
        cluster.close()
        if kind == "postgres":
            with psycopg.connect(SINK_DSN, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_worker_stopped_past_its_lease_mid_batch_lands_nothing_twice(cluster):
    c = cluster
    c.table_pipeline()
    work = c.workload(11)
    c.push(work.batch(1500))
    a = c.worker(DELIVERY_BATCH_SIZE=5)
    wait_for(lambda: c.stats()["delivered_seq"] >= 200, what="delivery to get under way")
    # Stopped anywhere outside a service transaction (on SQLite one would hold the
    # write lock for good): maybe inside a sink transaction, holding the progress row.
    pause_when(a, lambda: c.holder_pid() == a.pid and c.locks_free())
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


def test_worker_killed_mid_delivery_loses_and_repeats_nothing(cluster):
    """SIGKILL at a random moment of streaming: maybe inside a sink commit, maybe between two."""
    c = cluster
    c.table_pipeline()
    work = c.workload(19)
    c.push(work.batch(1500))
    a = c.worker(DELIVERY_BATCH_SIZE=5)
    wait_for(lambda: c.stats()["delivered_seq"] >= 200, what="delivery to get under way")
    kill(a)
    killed = c.stats()
    assert killed["delivered_seq"] < killed["log_end"], "delivery ended before the kill"
    # The sink is at the service's offset, or one batch ahead of it.
    assert killed["delivered_seq"] <= (c.sink_position() or 0) <= killed["delivered_seq"] + 5

    c.worker(DELIVERY_BATCH_SIZE=43)
    c.wait_caught_up()
    c.push(work.batch(200))
    c.wait_caught_up()
    c.assert_table_is_view()


def test_a_batch_the_sink_committed_but_the_service_did_not_record_is_not_applied_again(cluster):
    """A SIGKILL between the sink's commit and the service's: the next worker catches up."""
    from app.delivery import reader, sinks
    from app.extensions import db
    from app.transports import get_transport

    c = cluster
    c.table_pipeline()
    work = c.workload(12)
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
        get_transport(c.transport).apply(target, rows, epoch=connector.lease_epoch)
        db.session.remove()
    assert c.sink_position() == c.stats()["delivered_seq"] + 60

    c.worker()
    c.wait_caught_up()
    c.assert_table_is_view()


def test_executor_stopped_past_its_lease_cannot_switch_its_snapshot_in(cluster):
    c = cluster
    c.table_pipeline()
    work = c.workload(13)
    c.push(work.batch(RESET_CHANGES))
    a = c.worker(REPLAY_BATCH_SIZE=SLOW_REPLAY_BATCH, DELIVERY_BATCH_SIZE=500)
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
    work = c.workload(14)
    c.push(work.batch(RESET_CHANGES))
    a = c.worker(REPLAY_BATCH_SIZE=SLOW_REPLAY_BATCH, DELIVERY_BATCH_SIZE=500)
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
    work = c.workload(15)
    c.push(work.batch(RESET_CHANGES))
    c.worker(REPLAY_BATCH_SIZE=SLOW_REPLAY_BATCH, DELIVERY_BATCH_SIZE=500)
    c.wait_caught_up()
    token = c.reset()
    wait_for(lambda: c.status(token)["replayed_records"] >= 100, what="the replay")
    c.action("orders", "stop")
    before_start = c.table()
    assert c.stats()["sync_state"] == "resetting"
    c.action("orders", "start")
    assert c.reset_status(token).status_code == 410
    # The redo replays 2 records a batch too: some 1,400 fenced commits, each slower on
    # a loaded machine.
    seen = c.watch(lambda s: s["sync_state"] == "in_sync", timeout=150)
    assert all(s["health"] != "healthy" for s in seen if s["sync_state"] != "in_sync")
    resets = seen[-1]["resets"]
    assert (resets["last_origin"], resets["count"], resets["completed"]) == ("redo", 2, 1)
    assert before_start != Counter()
    c.push(work.batch(200))
    c.wait_caught_up()
    c.assert_table_is_view(redos=1)


def test_a_sink_changed_behind_the_service_is_reported_then_redone(cluster):
    c = cluster
    c.table_pipeline()
    work = c.workload(16)
    c.push(work.batch(600))
    c.worker()
    c.wait_caught_up()
    c.damage()
    # postgres: deletes that find no row; delta: a table whose position is gone.
    c.push([{"delete": r} for r in work.live[:5]])
    work.live = work.live[5:]
    seen = c.watch(lambda s: s["resets"]["completed"] >= 1 and s["sync_state"] == "in_sync")
    assert any(s["sync_state"] == "resetting" for s in seen) or seen[0]["resets"]["count"] >= 1
    stats = c.stats()
    assert stats["resets"]["last_origin"] == "redo"
    expected = "lacks 5 row(s)" if c.kind == "postgres" else "behind"
    assert expected in stats["last_error"], stats["last_error"]
    c.push(work.batch(100))
    c.wait_caught_up()
    c.assert_table_is_view(redos=1)


@pytest.mark.parametrize("cluster", KINDS[:1], indirect=True)
def test_a_sink_table_truncated_behind_the_service_is_found_out_with_no_delete_missed(cluster):
    """Only inserts follow the TRUNCATE (no delete can miss its row): the table's file,
    recorded with its position, tells the worker the table was emptied; it is redone."""
    c = cluster
    c.table_pipeline()
    work = c.workload(17)
    c.push(work.batch(300))
    c.worker()
    c.wait_caught_up()
    c.sql(f'TRUNCATE "{c.schema}".totals')
    c.push([{"insert": {"id": 10_000 + i, "note": "after"}} for i in range(5)])
    c.watch(lambda s: s["resets"]["completed"] >= 1 and s["sync_state"] == "in_sync")
    assert "emptied" in c.stats()["last_error"]
    c.wait_caught_up()
    c.assert_table_is_view(redos=1)


@pytest.mark.parametrize("cluster", KINDS[:1], indirect=True)  # a Delta table has no locks
def test_a_sink_table_locked_by_another_session_is_retried_then_catches_up(cluster):
    """A hung sink: the table is locked; each attempt gives up after a third of the lease."""
    c = cluster
    c.table_pipeline()
    work = c.workload(17)
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


def test_a_connector_started_with_skip_records_the_skip_in_its_sink(cluster):
    """Paused, then started with skip: the sink never gets what came meanwhile, and no redo."""
    from tests.faults import fold

    c = cluster
    c.table_pipeline()
    work = c.workload(18)
    c.push(work.batch(300))
    c.worker()
    c.wait_caught_up()
    url = f"{c.connectors_url('orders')}/sink1"
    c.call("POST", f"{url}/pause", expect=200)
    held = c.stats()["delivered_seq"]
    c.push(work.batch(200))  # skipped
    started = c.call("POST", f"{url}/start", expect=200, json={"skip": True}).get_json()
    assert started["paused"] is False
    skipped_to = c.stats()["delivered_seq"]
    assert skipped_to == c.stats()["log_end"] > held
    c.push([{"insert": {"id": 10_000 + i, "note": "after"}} for i in range(50)])
    c.wait_caught_up()
    stats = c.stats()
    assert stats["resets"]["count"] == 0, stats  # no snapshot was owed
    log = c.log()
    assert c.table() == fold(log[:held] + log[skipped_to:])
    assert c.sink_position() == stats["delivered_seq"]
    assert c.connector()["skipped_from"] is None


def test_a_reset_cancelled_mid_replay_leaves_the_table_as_it_was_and_streams_on(cluster):
    """A cancel while a real worker stages the snapshot: the table, its version and position stay.

    The worker is stopped mid-replay (outside a service transaction), the cancel
    is sent, and the worker goes on: it finds the reset cancelled at its next
    fenced write, drops its staging copy and gives the connector back.
    """
    c = cluster
    c.table_pipeline()
    work = c.workload(21)
    c.push(work.batch(1500))
    # A lease far longer than the stop lasts: a stopped executor past its lease
    # is judged gone (409 owed; a busy machine got there with a 1 s lease),
    # which is not what this test is about.
    worker = c.worker(REPLAY_BATCH_SIZE=SLOW_REPLAY_BATCH, WORKER_LEASE_SECONDS=30)
    c.wait_caught_up()
    before, position, seq = c.table(), c.sink_position(), c.stats()["delivered_seq"]
    version = c.delta_version() if c.kind.startswith("delta") else None
    token = c.reset()

    def replaying() -> bool:
        status = c.status(token)
        return status["phase"] == "replaying_snapshot" and status["replayed_records"] >= 100

    pause_when(worker, lambda: replaying() and c.locks_free())
    answer = c.cancel(token)
    resume_process(worker)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["status"] == "cancelled"
    wait_for(lambda: c.staging_tables() == [], what="the staging copy to go")
    wait_for(lambda: c.connector()["lease_owner"] is None, what="the connector given back")
    assert c.stats()["sync_state"] == "in_sync"
    assert c.table() == before
    assert c.sink_position() == position
    assert c.stats()["delivered_seq"] == seq
    if version is not None:
        assert c.delta_version() == version  # not one commit more
    c.push(work.batch(100))
    c.wait_caught_up()
    c.assert_table_is_view()
    assert c.status(token)["status"] == "cancelled"
