"""The ``postgres`` transport against a real PostgreSQL server: batches, positions, resets.

The sink tables live in a database of their own (``.ci/postgres.sh`` creates
``pipeline_manager_sinks``), each test in a schema of its own. The DSN comes
from ``PIPELINE_MANAGER_TEST_SINK_DSN``, or from the server of
``PIPELINE_MANAGER_TEST_POSTGRES_URL``. Without either these tests skip,
except under CI, where they fail.
"""

# ruff: noqa: S608 (the statements name a schema the fixture made, never input)

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from app.delivery.sinks import PipelineRef, SinkTarget, ViewRef
from app.errors import InvalidRequest
from app.transports import TransportError, get_transport, postgres
from app.transports.postgres import database_of
from app.transports.tables import SinkDiverged, SinkMoved, is_table_sink


def sink_dsn() -> str | None:
    """The sink database's DSN (libpq form), or None when no server is configured."""
    if os.environ.get("PIPELINE_MANAGER_TEST_SINK_DSN"):
        return os.environ["PIPELINE_MANAGER_TEST_SINK_DSN"]
    url = os.environ.get("PIPELINE_MANAGER_TEST_POSTGRES_URL")
    if not url:
        return None
    base = url.replace("postgresql+psycopg://", "postgresql://", 1).rsplit("/", 1)[0]
    return f"{base}/pipeline_manager_sinks"


SINK_DSN = sink_dsn()
if not SINK_DSN and os.environ.get("CI"):
    pytest.fail("CI must set PIPELINE_MANAGER_TEST_POSTGRES_URL", pytrace=False)

pytestmark = pytest.mark.skipif(not SINK_DSN, reason="no PostgreSQL server for sink tables")

DRIVER = get_transport("postgres")


@pytest.fixture
def schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh schema in the sink database; ``SINK_DSN_TEST`` names the database."""
    assert SINK_DSN is not None
    monkeypatch.setenv("SINK_DSN_TEST", SINK_DSN)
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SINK_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect(SINK_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def sql(statement: str, *params: Any) -> list[tuple]:
    """Run one statement on the sink database; return its rows (if any)."""
    assert SINK_DSN is not None
    with psycopg.connect(SINK_DSN, autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def target(schema: str, **config: Any) -> SinkTarget:
    settings = {"dsn_env": "SINK_DSN_TEST", "table": f"{schema}.orders", **config}
    return SinkTarget(
        id=1,
        uid=str(uuid.uuid4()),
        name="warehouse",
        transport="postgres",
        config=settings,
        view_id=1,
        view=ViewRef("totals", PipelineRef("orders", "default")),
    )


def text(record: dict) -> str:
    from app.view_data.store import canonical

    return canonical(record)


def rows(first: int, *changes: tuple[str, dict]) -> list[tuple[int, int, str]]:
    """Log rows from ``first`` on: ``("insert", r)`` / ``("delete", r)``."""
    return [
        (first + i, 1 if op == "insert" else -1, text(record))
        for i, (op, record) in enumerate(changes)
    ]


def contents(schema: str, columns: str = "id, note") -> Counter:
    return Counter(sql(f'SELECT {columns} FROM "{schema}".orders'))


def position(schema: str, sink: SinkTarget) -> tuple[int, int] | None:
    found = sql(
        f'SELECT seq, epoch FROM "{schema}".pipeline_manager_progress WHERE connector_uid = %s',
        sink.uid,
    )
    return found[0] if found else None


def orders_table(schema: str, key: bool = False) -> None:
    primary = " PRIMARY KEY" if key else ""
    sql(
        f'CREATE TABLE "{schema}".orders (id integer{primary}, note text, price numeric, '
        "tags jsonb, loaded_at timestamptz DEFAULT now())"
    )


# -- settings ------------------------------------------------------------------


def test_settings_are_checked_and_completed(app, schema):
    with app.app_context():
        assert is_table_sink(DRIVER)
        good = DRIVER.validate_config(
            {"dsn_env": "SINK_DSN_TEST", "table": "a.b", "key": ["id"]}, tenant="default"
        )
        assert good == {"dsn_env": "SINK_DSN_TEST", "table": "a.b", "mode": "rows", "key": ["id"]}
        assert DRIVER.sink_key(good, "default") == f"postgres:{database_of(SINK_DSN)}:a.b"
        assert DRIVER.sink_key({**good, "table": "b"}, "x") == (
            f"postgres:{database_of(SINK_DSN)}:public.b"
        )
        refused = {
            "dsn_env": [
                {"dsn_env": "DATABASE_URL", "table": "t"},  # not a sink variable
                {"dsn_env": "SINK_DSN_UNSET_X", "table": "t"},
                {"dsn_env": "SINK_DSN_", "table": "t"},
                {"dsn_env": 3, "table": "t"},
                {"table": "t"},
            ],
            "table": [
                {"dsn_env": "SINK_DSN_TEST", "table": 'a"; drop'},
                {"dsn_env": "SINK_DSN_TEST", "table": "a.b.c"},
                {"dsn_env": "SINK_DSN_TEST", "table": ""},
                {"dsn_env": "SINK_DSN_TEST", "table": "x" * 64},
                {"dsn_env": "SINK_DSN_TEST", "table": "pipeline_manager_progress"},
            ],
            "key": [
                {"dsn_env": "SINK_DSN_TEST", "table": "t", "key": []},
                {"dsn_env": "SINK_DSN_TEST", "table": "t", "key": ["a", "a"]},
                {"dsn_env": "SINK_DSN_TEST", "table": "t", "key": "id"},
                {"dsn_env": "SINK_DSN_TEST", "table": "t", "key": ["id"], "mode": "jsonb"},
            ],
            "mode": [{"dsn_env": "SINK_DSN_TEST", "table": "t", "mode": "upsert"}],
        }
        for field, configs in refused.items():
            for config in configs:
                with pytest.raises(InvalidRequest) as caught:
                    DRIVER.validate_config(config, tenant="default")
                assert f"transport.config.{field}" in caught.value.details, config
        with pytest.raises(InvalidRequest) as caught:
            DRIVER.validate_config({"dsn_env": "SINK_DSN_TEST", "table": "t", "x": 1}, tenant="d")
        assert "transport.config" in caught.value.details
        # The prefix is a setting: another one refuses the default's variables.
        app.config["POSTGRES_SINK_DSN_PREFIX"] = "WAREHOUSE_DSN_"
        with pytest.raises(InvalidRequest) as caught:
            DRIVER.validate_config({"dsn_env": "SINK_DSN_TEST", "table": "t"}, tenant="d")
        assert "WAREHOUSE_DSN_" in str(caught.value.details)


# -- streaming -------------------------------------------------------------------


def test_a_batch_and_its_position_land_together_and_a_repeat_is_skipped(app, schema):
    orders_table(schema)
    sink = target(schema)
    a, b = {"id": 1, "note": "a", "price": 9.5, "tags": ["x"]}, {"id": 2, "note": "b"}
    with app.app_context():
        assert DRIVER.position(sink) is None
        applied = DRIVER.apply(sink, rows(1, ("insert", a), ("insert", b), ("insert", b)), epoch=3)
        assert not applied.skipped and applied.version is not None
        assert applied.size == len(text(a)) + 2 * len(text(b))
        assert contents(schema) == Counter({(1, "a"): 1, (2, "b"): 2})
        assert position(schema, sink) == (3, 3)
        assert DRIVER.position(sink) == 3
        # Typed columns; a column the record lacks gets its default.
        price, tags, loaded = sql(
            f'SELECT price, tags, loaded_at FROM "{schema}".orders WHERE id=1'
        )[0]
        assert (str(price), tags, loaded is not None) == ("9.5", ["x"], True)

        again = DRIVER.apply(sink, rows(1, ("insert", a), ("insert", b), ("insert", b)), epoch=4)
        assert again.skipped and again.size == 0
        assert contents(schema) == Counter({(1, "a"): 1, (2, "b"): 2})

        with pytest.raises(SinkMoved) as moved:
            DRIVER.apply(sink, rows(5, ("insert", a)), epoch=4)
        assert moved.value.position == 3
        assert contents(schema) == Counter({(1, "a"): 1, (2, "b"): 2})

        DRIVER.apply(sink, rows(4, ("delete", b), ("insert", {"id": 3}), ("delete", a)), epoch=4)
        assert contents(schema) == Counter({(2, "b"): 1, (3, None): 1})
        assert position(schema, sink) == (6, 4)


def test_a_delete_the_table_cannot_match_means_the_sink_diverged(app, schema):
    orders_table(schema)
    sink = target(schema)
    with app.app_context():
        DRIVER.apply(sink, rows(1, ("insert", {"id": 1, "note": "a"})), epoch=1)
        sql(f'DELETE FROM "{schema}".orders')  # changed outside the service
        with pytest.raises(SinkDiverged):
            DRIVER.apply(
                sink, rows(2, ("insert", {"id": 2}), ("delete", {"id": 1, "note": "a"})), epoch=1
            )
        assert position(schema, sink) == (1, 1)  # nothing of the batch landed
        assert contents(schema) == Counter()


def test_a_key_makes_an_insert_replace_its_row_even_split_from_its_delete(app, schema):
    orders_table(schema, key=True)
    sink = target(schema, key=["id"])
    old, new = {"id": 1, "note": "old"}, {"id": 1, "note": "new"}
    with app.app_context():
        DRIVER.apply(sink, rows(1, ("insert", old), ("insert", {"id": 2, "note": "x"})), epoch=1)
        # An update split across two batches: the new version first, then the old one's delete.
        DRIVER.apply(sink, rows(3, ("insert", new)), epoch=1)
        assert contents(schema) == Counter({(1, "new"): 1, (2, "x"): 1})
        DRIVER.apply(sink, rows(4, ("delete", old)), epoch=1)
        assert contents(schema) == Counter({(1, "new"): 1, (2, "x"): 1})
        # In one batch, in either order.
        newer = {"id": 1, "note": "newer"}
        DRIVER.apply(sink, rows(5, ("insert", newer), ("delete", new)), epoch=1)
        DRIVER.apply(
            sink,
            rows(7, ("delete", {"id": 2, "note": "x"}), ("insert", {"id": 2, "note": "y"})),
            epoch=1,
        )
        assert contents(schema) == Counter({(1, "newer"): 1, (2, "y"): 1})


def test_records_the_table_cannot_hold_are_refused_as_poison_and_nothing_lands(app, schema):
    orders_table(schema)
    sink = target(schema)
    with app.app_context():
        for bad in ({"id": 1, "colour": "red"}, {"id": "one"}, {"id": 1, "price": "cheap"}):
            with pytest.raises(TransportError) as caught:
                DRIVER.apply(sink, rows(1, ("insert", {"id": 7}), ("insert", bad)), epoch=1)
            assert caught.value.poison, bad
        assert contents(schema) == Counter()
        assert DRIVER.position(sink) in (None, 0)
        missing = target(schema, table=f"{schema}.nothing")
        with pytest.raises(TransportError) as caught:
            DRIVER.apply(missing, rows(1, ("insert", {"id": 1})), epoch=1)
        assert caught.value.poison and "does not exist" in str(caught.value)


def test_the_variable_unset_in_the_worker_is_a_plain_failure(app, schema, monkeypatch):
    sink = target(schema)
    monkeypatch.delenv("SINK_DSN_TEST")
    with app.app_context(), pytest.raises(TransportError) as caught:
        DRIVER.apply(sink, rows(1, ("insert", {"id": 1})), epoch=1)
    assert not caught.value.poison and "SINK_DSN_TEST" in str(caught.value)
    assert SINK_DSN not in str(caught.value)


def test_a_grant_taken_back_stops_delivery_until_it_is_given_again(app, schema, monkeypatch):
    """The worker checks ``POSTGRES_SINK_DSN_TENANTS`` before each connection to the sink."""
    orders_table(schema)
    sink = target(schema)  # of tenant "default"
    with app.app_context():
        monkeypatch.setitem(app.config, "POSTGRES_SINK_DSN_TENANTS", {"SINK_DSN_TEST": ["default"]})
        DRIVER.apply(sink, rows(1, ("insert", {"id": 1})), epoch=1)
        monkeypatch.setitem(app.config, "POSTGRES_SINK_DSN_TENANTS", {"SINK_DSN_TEST": ["other"]})
        for call in (
            lambda: DRIVER.apply(sink, rows(2, ("insert", {"id": 2})), epoch=1),
            lambda: DRIVER.position(sink),
            lambda: DRIVER.begin_reset(sink, 2),
        ):
            with pytest.raises(TransportError) as caught:
                call()
            assert not caught.value.poison
            assert "SINK_DSN_TEST is not granted" in str(caught.value)
        assert contents(schema, "id") == Counter({(1,): 1})
        monkeypatch.setitem(app.config, "POSTGRES_SINK_DSN_TENANTS", {"SINK_DSN_TEST": "*"})
        DRIVER.apply(sink, rows(2, ("insert", {"id": 2})), epoch=1)
    assert contents(schema, "id") == Counter({(1,): 1, (2,): 1})
    assert position(schema, sink) == (2, 1)


def test_mode_jsonb_creates_its_table_and_deletes_one_equal_record(app, schema):
    sink = target(schema, mode="jsonb")
    r = {"id": 1, "nested": {"b": [1, 2.5], "a": None}}
    with app.app_context():
        DRIVER.apply(sink, rows(1, ("insert", r), ("insert", r), ("insert", {"id": 2})), epoch=1)
        DRIVER.apply(sink, rows(4, ("delete", r)), epoch=1)
        found = Counter(
            json.dumps(x, sort_keys=True) for (x,) in sql(f'SELECT record FROM "{schema}".orders')
        )
        assert found == Counter({json.dumps(r, sort_keys=True): 1, '{"id": 2}': 1})


def test_two_writers_of_one_batch_land_it_once(app, schema):
    orders_table(schema)
    sink = target(schema)
    batch = rows(1, *[("insert", {"id": i, "note": "n"}) for i in range(500)])
    results: list[Any] = []
    with app.app_context():

        def write() -> None:
            with app.app_context():
                results.append(DRIVER.apply(sink, batch, epoch=1))

        threads = [threading.Thread(target=write) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(r.skipped for r in results) == [False, True, True, True]
    assert sum(contents(schema).values()) == 500


def test_a_progress_table_made_by_another_writer_at_the_same_moment_is_taken_as_made(schema):
    """Two ``CREATE TABLE IF NOT EXISTS`` at once: the loser may be told its table's row
    type already exists (42710); that writer goes on with the table the other made."""
    orders_table(schema)
    assert SINK_DSN is not None
    table = postgres._Table(target(schema))
    with psycopg.connect(SINK_DSN, autocommit=True) as conn:
        real = conn.execute
        lost: list[str] = []

        def racing(statement: Any, *args: Any, **kwargs: Any) -> Any:
            text = statement.as_string(conn) if hasattr(statement, "as_string") else statement
            if "CREATE TABLE" in text and not lost:
                real(statement, *args, **kwargs)  # the other writer's, made first
                lost.append(text)
                raise psycopg.errors.DuplicateObject(
                    'type "pipeline_manager_progress" already exists'
                )
            return real(statement, *args, **kwargs)

        conn.execute = racing  # type: ignore[method-assign]
        table.ensure_progress(conn, again=True)
    assert lost and "pipeline_manager_progress" in lost[0]
    assert ("pipeline_manager_progress",) in sql(
        f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'"
    )


# -- resets ----------------------------------------------------------------------


def test_a_reset_switches_the_whole_snapshot_in_with_its_position(app, schema):
    orders_table(schema)
    sink = target(schema)
    with app.app_context():
        DRIVER.apply(sink, rows(1, ("insert", {"id": 1, "note": "stale"})), epoch=1)
        reset = DRIVER.begin_reset(sink, epoch=2)
        staged = [text({"id": i, "note": f"n{i}"}) for i in range(10)] + [
            text({"id": 3, "note": "n3"})
        ]
        assert reset.append(staged[:6]) > 0
        reset.append(staged[6:])
        assert contents(schema) == Counter({(1, "stale"): 1})  # not yet
        fenced: list[bool] = []
        version = reset.switch_in(40, lambda: fenced.append(True))
        assert fenced == [True] and version is not None
        expected = Counter((i, f"n{i}") for i in range(10)) + Counter({(3, "n3"): 1})
        assert contents(schema) == expected
        assert position(schema, sink) == (40, 2)
        assert sql(f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1") == [
            ("orders",),
            ("pipeline_manager_progress",),
        ]
        # Streaming goes on from the snapshot's position.
        DRIVER.apply(sink, rows(41, ("delete", {"id": 3, "note": "n3"})), epoch=3)
        assert contents(schema)[(3, "n3")] == 1


@pytest.mark.parametrize("kind", ["ALWAYS", "BY DEFAULT"])
def test_identity_columns_the_records_lack_are_numbered_by_the_table(app, schema, kind):
    """A surrogate id (``GENERATED ... AS IDENTITY``) the view does not carry: the table's
    own sequence numbers the rows, when streaming and after a reset alike, so no two rows
    share an id and later inserts do not collide with the snapshot's."""
    sql(
        f'CREATE TABLE "{schema}".orders (row_id bigint GENERATED {kind} AS IDENTITY '
        "PRIMARY KEY, id integer, note text)"
    )
    sink = target(schema)
    with app.app_context():
        DRIVER.apply(
            sink, rows(1, *[("insert", {"id": i, "note": "a"}) for i in range(3)]), epoch=1
        )
        reset = DRIVER.begin_reset(sink, epoch=2)
        reset.append([text({"id": i, "note": "b"}) for i in range(5)])
        reset.switch_in(10, lambda: None)
        DRIVER.apply(sink, rows(11, ("insert", {"id": 9, "note": "c"})), epoch=2)
        DRIVER.apply(sink, rows(12, ("delete", {"id": 0, "note": "b"})), epoch=2)
    assert contents(schema) == Counter({(i, "b"): 1 for i in range(1, 5)}) + Counter({(9, "c"): 1})
    ids = [r[0] for r in sql(f'SELECT row_id FROM "{schema}".orders')]
    assert len(set(ids)) == 5 and None not in ids


def test_identity_values_the_records_carry_are_kept_through_a_reset(app, schema):
    sql(
        f'CREATE TABLE "{schema}".orders (id bigint GENERATED BY DEFAULT AS IDENTITY '
        "PRIMARY KEY, note text)"
    )
    sink = target(schema, key=["id"])
    with app.app_context():
        reset = DRIVER.begin_reset(sink, epoch=2)
        reset.append([text({"id": i * 10, "note": "b"}) for i in range(1, 4)])
        reset.switch_in(10, lambda: None)
        DRIVER.apply(sink, rows(11, ("insert", {"id": 20, "note": "c"})), epoch=2)
    assert contents(schema) == Counter({(10, "b"): 1, (20, "c"): 1, (30, "b"): 1})


def test_a_reset_keeps_the_tables_identity_views_grants_and_indexes(app, schema):
    """What the README promises: the rows are replaced, the table itself is not."""
    orders_table(schema, key=True)
    sink = target(schema, key=["id"])
    sql(f'CREATE INDEX orders_note ON "{schema}".orders (note)')
    sql(f'CREATE VIEW "{schema}".notes AS SELECT note FROM "{schema}".orders')
    sql(f'GRANT SELECT ON "{schema}".orders TO PUBLIC')

    def identity() -> tuple:
        oid = sql(f"SELECT '\"{schema}\".orders'::regclass::oid")[0][0]
        indexes = sql(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'orders' "
            "ORDER BY 1",
            schema,
        )
        grants = sql(
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_schema = %s AND table_name = 'orders' AND grantee = 'PUBLIC'",
            schema,
        )
        return oid, indexes, grants

    with app.app_context():
        DRIVER.apply(sink, rows(1, ("insert", {"id": 1, "note": "old"})), epoch=1)
        before = identity()
        reset = DRIVER.begin_reset(sink, epoch=2)
        reset.append([text({"id": i, "note": "new"}) for i in range(5)])
        reset.switch_in(9, lambda: None)
    assert identity() == before
    assert before[1] == [("orders_note",), ("orders_pkey",)] and before[2] == [("PUBLIC", "SELECT")]
    assert sql(f'SELECT note, count(*) FROM "{schema}".notes GROUP BY note') == [("new", 5)]


def test_a_fence_that_refuses_leaves_the_table_as_it_was(app, schema):
    orders_table(schema)
    sink = target(schema)

    class LeaseGone(Exception):
        pass

    def refuse() -> None:
        raise LeaseGone

    with app.app_context():
        DRIVER.apply(sink, rows(1, ("insert", {"id": 1, "note": "kept"})), epoch=1)
        reset = DRIVER.begin_reset(sink, epoch=2)
        reset.append([text({"id": 9})])
        with pytest.raises(LeaseGone):
            reset.switch_in(5, refuse)
        reset.discard()
        assert contents(schema) == Counter({(1, "kept"): 1})
        assert position(schema, sink) == (1, 1)
        assert len(sql(f"SELECT 1 FROM pg_tables WHERE schemaname = '{schema}'")) == 2


def test_staging_tables_of_lower_epochs_are_dropped_higher_ones_kept(app, schema):
    orders_table(schema)
    sink = target(schema)
    with app.app_context():
        left = DRIVER.begin_reset(sink, epoch=3)
        left.conn.close()  # its executor died: the staging table stays
        newer = DRIVER.begin_reset(sink, epoch=9)
        newer.conn.close()
        reset = DRIVER.begin_reset(sink, epoch=5)
        tables = [
            t
            for (t,) in sql(
                f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' ORDER BY 1"
            )
        ]
        prefix = f"_pm_reset_{sink.uid.replace('-', '')}_"
        assert tables == [
            f"{prefix}5",
            f"{prefix}9",
            "orders",
            "pipeline_manager_progress",
        ]
        reset.discard()


def test_readers_see_the_old_rows_or_the_whole_snapshot_never_part_of_it(app, schema):
    """A reader polls the row count throughout a 200k-record reset."""
    orders_table(schema)
    sink = target(schema)
    old_total, new_total = 1000, 200_000
    seen: Counter = Counter()
    stop = threading.Event()

    def read() -> None:
        assert SINK_DSN is not None
        with psycopg.connect(SINK_DSN, autocommit=True) as conn:
            while not stop.is_set():
                seen[conn.execute(f'SELECT count(*) FROM "{schema}".orders').fetchone()[0]] += 1

    with app.app_context():
        old = [("insert", {"id": i, "note": "old"}) for i in range(old_total)]
        DRIVER.apply(sink, rows(1, *old), epoch=1)
        reader = threading.Thread(target=read)
        reader.start()
        try:
            reset = DRIVER.begin_reset(sink, epoch=2)
            for start in range(0, new_total, 10_000):
                reset.append([text({"id": i, "note": "new"}) for i in range(start, start + 10_000)])
            reset.switch_in(old_total, lambda: None)
            while seen[new_total] < 3:
                pass
        finally:
            stop.set()
            reader.join()
    assert set(seen) == {old_total, new_total}, seen
    assert seen[old_total] > 3


def test_a_writer_frozen_inside_a_batch_cannot_hold_the_table_past_a_lease(app, schema):
    """The server ends a sink session idle in a transaction after a lease (README)."""
    from app.transports.postgres import _Table

    orders_table(schema)
    sink = target(schema)
    app.config["WORKER_LEASE_SECONDS"] = 0.6  # statements 200 ms, an idle transaction 600 ms
    with app.app_context():
        DRIVER.apply(sink, rows(1, ("insert", {"id": 1})), epoch=1)
        frozen = _Table(sink).connect()
        try:
            # What a worker stopped mid-batch leaves: its transaction holds the progress row.
            assert _Table(sink).lock_position(frozen) == 1
            with pytest.raises(TransportError):  # the row is held: a lock wait gives up
                DRIVER.apply(sink, rows(2, ("insert", {"id": 2})), epoch=2)
            time.sleep(1.0)
            applied = DRIVER.apply(sink, rows(2, ("insert", {"id": 2})), epoch=2)
            assert not applied.skipped
            with pytest.raises(psycopg.Error):  # its session was ended by the server
                frozen.execute("SELECT 1")
        finally:
            frozen.close()
    assert contents(schema, "id") == Counter({(1,): 1, (2,): 1})


def test_a_writer_frozen_between_the_deletes_of_a_batch_is_ended_a_lease_later(
    app, schema, monkeypatch
):
    """Every statement of a batch ends with a Sync, so the server's idle timeout runs between
    any two of them. (A pipelined executemany would leave it unarmed: a writer stopped mid-
    pipeline held the progress row for as long as it stayed stopped, seen in a fault test.)"""
    orders_table(schema)
    sink = target(schema)
    app.config["WORKER_LEASE_SECONDS"] = 0.6  # statements 200 ms, an idle transaction 600 ms
    with app.app_context():
        DRIVER.apply(
            sink, rows(1, *[("insert", {"id": i, "note": "n"}) for i in range(4)]), epoch=1
        )
    deletes = [("delete", {"id": i, "note": "n"}) for i in range(4)]
    frozen, release = threading.Event(), threading.Event()
    execute = psycopg.Cursor.execute
    calls = {"deletes": 0}

    def freezing_execute(self, query, params=None, **kwargs):
        if threading.current_thread().name == "frozen" and "DELETE" in str(query):
            calls["deletes"] += 1
            if calls["deletes"] == 2:  # after the first delete, before the second is sent
                frozen.set()
                release.wait(10)
        return execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", freezing_execute)
    outcome: list[Any] = []

    def write() -> None:
        with app.app_context():
            try:
                outcome.append(DRIVER.apply(sink, rows(5, *deletes), epoch=1))
            except TransportError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=write, name="frozen")
    thread.start()
    try:
        assert frozen.wait(10), "the writer never reached its second delete"
        time.sleep(1.0)  # past the idle timeout: the server ends the frozen session
        with app.app_context():
            applied = DRIVER.apply(sink, rows(5, *deletes), epoch=2)
        assert not applied.skipped
    finally:
        release.set()
        thread.join(10)
    assert isinstance(outcome[0], TransportError)  # its session was gone when it went on
    assert contents(schema, "id") == Counter()
    assert position(schema, sink) == (8, 2)


# -- the table changed behind the service ---------------------------------------------------


def test_a_truncated_or_replaced_table_is_found_out_a_rewritten_one_is_not(app, schema):
    """A keyed table truncated, or dropped and created again, would take the next batches
    without a word (keyed deletes of missing rows change nothing): its identity (OID, and
    its file, which TRUNCATE replaces) is recorded with each position and checked."""
    orders_table(schema, key=True)
    sink = target(schema, key=["id"])
    with app.app_context():
        DRIVER.apply(
            sink, rows(1, *[("insert", {"id": i, "note": "n"}) for i in range(3)]), epoch=1
        )
        assert DRIVER.position(sink) == 3
        sql(f'VACUUM FULL "{schema}".orders')  # rewritten, rows kept: the same table
        assert DRIVER.position(sink) == 3
        sql(f'TRUNCATE "{schema}".orders')
        with pytest.raises(SinkDiverged, match="emptied"):
            DRIVER.position(sink)
        # A redo switches the snapshot in and records the table's identity again.
        reset = DRIVER.begin_reset(sink, epoch=2)
        reset.append([text({"id": i, "note": "n"}) for i in range(3)])
        reset.switch_in(3, lambda: None)
        assert DRIVER.position(sink) == 3
        sql(f'DROP TABLE "{schema}".orders')
        orders_table(schema, key=True)
        with pytest.raises(SinkDiverged, match="dropped and created again"):
            DRIVER.position(sink)


def test_two_tables_sharing_a_long_prefix_keep_their_own_reset_staging(app, schema):
    """Staging tables are named from the connector's uid: two tables whose names share their
    first 51 characters (once cut to fit the old suffix) no longer drop each other's."""
    stem = "x" * 55
    for name in ("daily", "weekly"):
        sql(f'CREATE TABLE "{schema}"."{stem}_{name}" (id integer, note text)')
    daily = target(schema, table=f"{schema}.{stem}_daily")
    weekly = target(schema, table=f"{schema}.{stem}_weekly")
    with app.app_context():
        first = DRIVER.begin_reset(daily, epoch=2)
        second = DRIVER.begin_reset(weekly, epoch=5)  # a higher epoch, another connector
        first.append([text({"id": 1, "note": "d"})])  # its staging table is still there
        first.switch_in(1, lambda: None)
        second.discard()
    assert Counter(sql(f'SELECT id, note FROM "{schema}"."{stem}_daily"')) == Counter({(1, "d"): 1})


def test_a_table_named_like_a_staging_table_is_refused(app, schema):
    with app.app_context(), pytest.raises(InvalidRequest) as caught:
        DRIVER.validate_config(
            {"dsn_env": "SINK_DSN_TEST", "table": f"{schema}._pm_reset_x"}, tenant="default"
        )
    assert "_pm_reset_" in str(caught.value.details)


def test_jsonb_deletes_find_their_records_by_index_in_one_statement(app, schema):
    sink = target(schema, mode="jsonb")
    records = [{"id": i, "note": "n"} for i in range(50)]
    with app.app_context():
        DRIVER.apply(sink, rows(1, *[("insert", r) for r in records]), epoch=1)
        statements: list[str] = []
        execute = psycopg.Cursor.execute

        def counting(self, query, params=None, **kwargs):
            text = query if isinstance(query, str) else query.as_string(self.connection)
            if "DELETE" in text:
                statements.append(text)
            return execute(self, query, params, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(psycopg.Cursor, "execute", counting)
            DRIVER.apply(sink, rows(51, *[("delete", r) for r in records[:40]]), epoch=1)
    assert len(statements) == 1
    assert len(sql(f'SELECT record FROM "{schema}".orders')) == 10
    indexes = sql(f"SELECT indexdef FROM pg_indexes WHERE schemaname = '{schema}'")
    assert any("USING hash (record)" in i for (i,) in indexes)


def test_a_sink_too_slow_for_a_whole_batch_gets_smaller_ones_and_moves_on(api, app, schema):
    """A trigger that sleeps per row makes every full batch outlast the attempt's deadline.

    Tried again the same size it would fail for ever; halved per failure in a row,
    it goes through, and the connector delivers the whole view.
    """
    from app.delivery.worker import DeliveryWorker
    from app.extensions import db

    orders_table(schema)
    sql(
        f'CREATE FUNCTION "{schema}".slow() RETURNS trigger LANGUAGE plpgsql AS '
        "$$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$"
    )
    sql(
        f'CREATE TRIGGER slow BEFORE INSERT ON "{schema}".orders '
        f'FOR EACH ROW EXECUTE FUNCTION "{schema}".slow()'
    )
    # A lease of 0.9 s: 0.3 s per attempt, 60 rows' sleep; batches of 240 rows.
    app.config.update(
        WORKER_LEASE_SECONDS=0.9, DELIVERY_BATCH_SIZE=240, DELIVERY_RETRY_BASE_SECONDS=0.01
    )
    api.create_pipeline()
    connector = {"dsn_env": "SINK_DSN_TEST", "table": f"{schema}.orders"}
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "sink1", "transport": {"name": "postgres", "config": connector}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    records = [{"id": i, "note": "n"} for i in range(240)]
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/changes", json=[{"insert": x} for x in records]
    )
    assert r.status_code == 200
    stats_url = "/v0/pipelines/orders/views/totals/connectors/sink1/stats"
    deadline = time.monotonic() + 60
    while api.client.get(stats_url).get_json()["delivered_seq"] < 240:
        assert time.monotonic() < deadline, api.client.get(stats_url).get_json()
        with app.app_context():
            DeliveryWorker("test-deliverer").run_pending()
            db.session.remove()
        time.sleep(0.02)  # past the backoff
    stats = api.client.get(stats_url).get_json()
    assert stats["transport_errors"] >= 1  # the whole batch did fail
    assert (stats["sync_state"], stats["consecutive_failures"]) == ("in_sync", 0)
    assert contents(schema) == Counter((r["id"], r["note"]) for r in records)


def test_a_batch_past_its_deadline_is_given_up_and_tried_again(app, schema, monkeypatch):
    """Statements each under their timeout can add up past the lease: a batch is checked
    against a third of the lease between statements, and rolled back past it."""
    orders_table(schema)
    sink = target(schema)
    app.config["WORKER_LEASE_SECONDS"] = 0.9
    with app.app_context():
        DRIVER.apply(
            sink, rows(1, *[("insert", {"id": i, "note": "n"}) for i in range(3)]), epoch=1
        )
        execute = psycopg.Cursor.execute

        def slow(self, query, params=None, **kwargs):
            if "DELETE" in str(query):
                time.sleep(0.2)  # each under the 0.3 s timeout, three of them past it
            return execute(self, query, params, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", slow)
        deletes = [("delete", {"id": i, "note": "n"}) for i in range(3)]
        with pytest.raises(TransportError, match="took longer") as caught:
            DRIVER.apply(sink, rows(4, *deletes), epoch=1)
        assert not caught.value.poison
        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        DRIVER.apply(sink, rows(4, *deletes), epoch=1)
    assert contents(schema, "id") == Counter()
