"""The delta transport's declared columns: typed change tables (mode changes) and keyed tables
equal to the view (mode rows), read back with deltalake and compared with the view.

The driver is tested directly (conversions, merges, races, resets), then through the API
and a real delivery worker and reset executor, on the service database the suite runs on
(SQLite, or PostgreSQL with ``PIPELINE_MANAGER_TEST_DATABASE_URL``).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import uuid4

import pyarrow as pa
import pytest
import sqlalchemy as sa
from deltalake import DeltaTable
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from app.delivery.sinks import PipelineRef, SinkTarget, ViewRef
from app.delivery.worker import DeliveryWorker
from app.errors import InvalidRequest
from app.extensions import db
from app.transports import delta
from app.transports.base import TransportError
from app.transports.delta import DeltaTransport
from app.transports.tables import Applied, LogRow
from app.view_data import store
from tests.conftest import assert_error
from tests.test_delta_sink import race_two_writers
from tests.test_delta_sink import sinks as sinks
from tests.test_view_data import view_contents

DRIVER = DeltaTransport()
COLUMNS = {"id": "long", "name": "string", "total": "double"}
CONNECTORS = "/v0/pipelines/orders/views/totals/connectors"
CHANGES = "/v0/pipelines/orders/views/totals/changes"


def target(mode: str = "rows", columns: dict[str, str] | None = None, **extra: Any) -> SinkTarget:
    config: dict[str, Any] = {"path": "tables/t", "mode": mode, "columns": columns or COLUMNS}
    if mode == "rows":
        config["key"] = extra.pop("key", ["id"])
    config.update(extra)
    return SinkTarget(
        id=1,
        uid=str(uuid4()),
        name="c",
        transport="delta",
        config=config,
        view_id=1,
        view=ViewRef("v", PipelineRef("p", "default")),
    )


def rec(i: int, name: str | None = None, total: float = 1.5) -> str:
    return store.canonical({"id": i, "name": name or f"n{i}", "total": total})


def log(first: int, *changes: tuple[int, str]) -> list[LogRow]:
    """Log rows from seq ``first`` on: (weight, record text)."""
    return [(first + n, weight, text) for n, (weight, text) in enumerate(changes)]


def read(path: Path) -> pa.Table:
    return DeltaTable(str(path)).to_pyarrow_dataset().to_table(use_threads=False)


def as_records(rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> Counter[str]:
    """Table rows as a multiset of canonical records (null columns left out)."""
    return Counter(
        store.canonical({k: v for k, v in row.items() if v is not None and k not in skip})
        for row in rows
    )


def folded(path: Path) -> Counter[str]:
    """A typed change table folded: +1 per insert row, -1 per delete row."""
    view: Counter[str] = Counter()
    for row in read(path).to_pylist():
        text = store.canonical(
            {k: v for k, v in row.items() if v is not None and k not in ("seq", "op")}
        )
        view[text] += 1 if row["op"] == "insert" else -1
    return +view


# -- settings ---------------------------------------------------------------------------


def test_declared_columns_are_normalised(sinks: Path) -> None:
    config = {"path": "t", "columns": {"id": "long", "price": "decimal(10, 2)"}}
    assert DRIVER.validate_config(config, tenant="default") == {**config, "mode": "changes"}
    rows = {"path": "t", "mode": "rows", "columns": COLUMNS, "key": ["id"]}
    assert DRIVER.validate_config(rows, tenant="default") == rows


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({"columns": {"id": "varchar"}}, "columns", "unknown type"),
        ({"columns": {"id": "decimal(40,2)"}}, "columns", "unknown type"),
        ({"columns": {"id": "decimal(5,6)"}}, "columns", "unknown type"),
        ({"columns": {"id": 3}}, "columns", "unknown type"),
        ({"columns": {}}, "columns", "1 to"),
        ({"columns": ["id"]}, "columns", "1 to"),
        ({"columns": {"1id": "long"}}, "columns", "letters, digits"),
        ({"columns": {"a b": "long"}}, "columns", "letters, digits"),
        ({"columns": {"id": "long", "ID": "long"}}, "columns", "named twice"),
        ({"columns": {"seq": "long"}}, "columns", "adds seq and op"),
        ({"columns": {"_pm_delete": "boolean"}}, "columns", "reserved"),
        ({"columns": {"id": "long"}, "key": ["id"]}, "key", "mode rows"),
        ({"mode": "rows"}, "columns", "Required in mode rows"),
        ({"mode": "rows", "columns": {"id": "long"}}, "key", "Required in mode rows"),
        ({"mode": "rows", "columns": {"id": "long"}, "key": []}, "key", "distinct"),
        ({"mode": "rows", "columns": {"id": "long"}, "key": ["id", "id"]}, "key", "distinct"),
        ({"mode": "rows", "columns": {"id": "long"}, "key": "id"}, "key", "distinct"),
        ({"mode": "rows", "columns": {"id": "long"}, "key": ["x"]}, "key", "Not declared"),
    ],
)
def test_invalid_columns_or_key_are_400_naming_the_field(
    sinks: Path, config: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        DRIVER.validate_config({"path": "t", **config}, tenant="default")
    assert caught.value.status_code == 400
    assert list(caught.value.details) == [f"transport.config.{field}"]
    assert says in " ".join(caught.value.details[f"transport.config.{field}"])


def test_the_api_refuses_an_unknown_type_with_a_structured_error(api, client) -> None:
    api.create_pipeline()
    config = {"path": "tables/t", "columns": {"id": "long", "at": "datetime"}}
    r = client.post(
        CONNECTORS, json={"name": "lake", "transport": {"name": "delta", "config": config}}
    )
    body = assert_error(r, 400, "InvalidRequest")
    assert 'unknown type "datetime"' in body["details"]["transport.config.columns"][0]


# -- conversions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "value", "stored"),
    [
        ("string", "zoë", "zoë"),
        ("string", {"b": [1, 2], "a": None}, '{"a":null,"b":[1,2]}'),
        ("long", -(2**63), -(2**63)),
        ("integer", 2**31 - 1, 2**31 - 1),
        ("short", -(2**15), -(2**15)),
        ("byte", 127, 127),
        ("double", 2.5, 2.5),
        ("double", 7, 7.0),
        ("float", 0.5, 0.5),
        ("boolean", True, True),
        ("timestamp", "2024-05-01T12:30:00.123456Z", datetime(2024, 5, 1, 12, 30, 0, 123456, UTC)),
        ("timestamp", "2024-05-01T14:30:00+02:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("timestamp", "2024-05-01 12:30:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("timestamp", 1714566600, datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("timestamp", 1714566600.5, datetime(2024, 5, 1, 12, 30, 0, 500000, UTC)),
        ("date", "2024-02-29", date(2024, 2, 29)),
        ("decimal(10,2)", 12.5, Decimal("12.50")),
        ("decimal(10,2)", "-99999999.99", Decimal("-99999999.99")),
        ("decimal(38,0)", "9" * 38, Decimal("9" * 38)),
        ("binary", "aGk=", b"hi"),
        ("long", None, None),
    ],
)
def test_values_are_converted_into_their_columns(
    sinks: Path, type_name: str, value: Any, stored: Any
) -> None:
    t = target("changes", {"id": "long", "v": type_name})
    DRIVER.apply(t, log(1, (1, store.canonical({"id": 1, "v": value}))), epoch=1)
    (row,) = read(sinks / "tables" / "t").to_pylist()
    assert row["v"] == stored
    if isinstance(stored, datetime):
        assert row["v"].utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    ("type_name", "value", "says"),
    [
        ("string", 5, "text"),
        ("long", 1.5, "an integer is needed"),
        ("long", "1", "an integer is needed"),
        ("long", True, "an integer is needed"),
        ("integer", 2**31, "out of range"),
        ("byte", -129, "out of range"),
        ("double", "1.5", "a number is needed"),
        ("float", 1e300, "out of the range"),
        ("boolean", 1, "true or false"),
        ("timestamp", "yesterday", "ISO-8601"),
        ("timestamp", 1e20, "out of range"),
        ("date", "2024-02-30", "ISO-8601"),
        ("date", 20240101, "ISO-8601"),
        ("decimal(10,2)", 1.005, "after the point"),
        ("decimal(4,2)", 123, "before the point"),
        ("decimal(4,2)", "abc", "not a number"),
        ("binary", "not base64!", "base64"),
    ],
)
def test_a_value_its_column_cannot_take_refuses_the_batch(
    sinks: Path, type_name: str, value: Any, says: str
) -> None:
    for mode in ("changes", "rows"):
        t = target(mode, {"id": "long", "v": type_name}, path=f"tables/{mode}")
        DRIVER.apply(t, log(1, (1, store.canonical({"id": 1}))), epoch=1)
        with pytest.raises(TransportError) as caught:
            DRIVER.apply(t, log(2, (1, store.canonical({"id": 2, "v": value}))), epoch=1)
        assert caught.value.poison
        assert says in str(caught.value) and "field 'v'" in str(caught.value)
        assert DRIVER.position(t) == 1  # nothing landed
        assert read(sinks / "tables" / mode).num_rows == 1


def test_a_field_the_columns_lack_or_a_null_key_refuses_the_batch(sinks: Path) -> None:
    t = target()
    for text, says in (
        (store.canonical({"id": 1, "colour": "red"}), "field 'colour' is not one of its columns"),
        (store.canonical({"id": None, "name": "x"}), "key column 'id' is null"),
        (store.canonical({"name": "x"}), "lacks its key column 'id'"),
        ("[1, 2]", "not a JSON object"),
    ):
        with pytest.raises(TransportError) as caught:
            DRIVER.apply(t, log(1, (1, rec(0)), (1, text)), epoch=1)
        assert caught.value.poison and says in str(caught.value), str(caught.value)
    assert DRIVER.position(t) is None


def test_a_refused_batch_already_held_is_skipped_not_refused(sinks: Path) -> None:
    t = target()
    DRIVER.apply(t, log(1, (1, rec(1))), epoch=1)
    assert DRIVER.apply(t, log(1, (1, '{"id":1,"colour":"red"}')), epoch=1).skipped


# The types Arrow's JSON reader converts in one pass (delta_columns._READER_TYPES), with
# values around each one's edges; a field now and then holds a value of another kind, or
# is not a column. A batch must come out exactly as converted one record at a time, or be
# refused with the same message.
READER_COLUMNS = {
    "id": "long",
    "i": "integer",
    "s": "short",
    "b": "byte",
    "d": "double",
    "t": "boolean",
    "name": "string",
}


def _in(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high) | st.sampled_from([low, high, 0, -1])


TAKEN = {
    "id": _in(-(2**63), 2**63 - 1),
    "i": _in(-(2**31), 2**31 - 1),
    "s": _in(-(2**15), 2**15 - 1),
    "b": _in(-128, 127),
    "d": st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([1e20, 1e21, 2**53 + 1, -0.0, 5e-324, 1.7976931348623157e308]),
    "t": st.booleans(),
    "name": st.text(max_size=6) | st.sampled_from(["é", "😀", '"\\', "\n\t", "1", ""]),
}
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
)


def _field(name: str) -> st.SearchStrategy[Any]:
    """Mostly a value the column takes (or null), one time in ten any JSON value."""
    return st.integers(0, 9).flatmap(lambda r: ANY if r == 0 else (st.none() | TAKEN[name]))


RECORDS = st.tuples(
    st.fixed_dictionaries({}, optional={name: _field(name) for name in READER_COLUMNS}),
    st.integers(0, 19),
).map(lambda pair: {**pair[0], "other": 1} if pair[1] == 0 else pair[0])


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORDS, min_size=1, max_size=5))
def test_a_batch_read_in_one_pass_is_what_record_by_record_conversion_gives(
    records: list[dict[str, Any]],
) -> None:
    for key in ((), ("id",)):
        columns = delta.Columns(READER_COLUMNS, key)
        texts = [store.canonical(r) for r in records]
        try:
            one_by_one = pa.Table.from_arrays(
                columns.arrays([columns.parse(t) for t in texts]), schema=columns.schema
            )
        except delta.Refused as exc:
            with pytest.raises(delta.Refused) as caught:
                columns.table(texts)
            assert str(caught.value) == str(exc)
            continue
        read = columns.table(texts)
        assert read.schema == one_by_one.schema
        assert read.to_pylist() == one_by_one.to_pylist()


# -- mode changes -----------------------------------------------------------------------


def test_mode_changes_with_columns_has_seq_op_and_the_typed_columns(sinks: Path) -> None:
    t = target("changes")
    path = sinks / "tables" / "t"
    DRIVER.apply(t, log(1, (1, rec(1)), (1, rec(2)), (1, rec(2))), epoch=1)
    DRIVER.apply(t, log(4, (-1, rec(2)), (-1, rec(1)), (1, rec(3, total=2))), epoch=1)
    table = read(path)
    assert table.schema.names == ["seq", "op", "id", "name", "total"]
    assert [str(f.type) for f in DeltaTable(str(path)).schema().fields] == [
        'PrimitiveType("long")',
        'PrimitiveType("string")',
        'PrimitiveType("long")',
        'PrimitiveType("string")',
        'PrimitiveType("double")',
    ]
    assert sorted(table["seq"].to_pylist()) == [1, 2, 3, 4, 5, 6]
    assert folded(path) == Counter({rec(2): 1, rec(3, total=2): 1})
    assert DeltaTable(str(path)).transaction_version(t.uid) == 6
    # A reset: one overwrite commit, every row an insert at the snapshot's seq.
    reset = DRIVER.begin_reset(t, 2)
    reset.append([rec(7), rec(7), rec(8)])
    version = reset.switch_in(30, lambda: None)
    reset.discard()
    table = DeltaTable(str(path))
    assert version == table.version() == 3
    assert table.history(1)[0]["operationParameters"]["mode"] == "Overwrite"
    assert set(read(path)["seq"].to_pylist()) == {30}
    assert folded(path) == Counter({rec(7): 2, rec(8): 1})


# -- mode rows --------------------------------------------------------------------------


def test_mode_rows_merges_each_batch_on_the_key_in_one_commit(sinks: Path) -> None:
    t = target()
    path = sinks / "tables" / "t"
    DRIVER.apply(t, log(1, (1, rec(1)), (1, rec(2)), (1, rec(3))), epoch=1)
    # An update in one batch (delete old, insert new), folded per key first.
    DRIVER.apply(t, log(4, (-1, rec(1)), (1, rec(1, "one")), (1, rec(4)), (-1, rec(4))), epoch=1)
    # An update split over two batches, the insert first: the later delete of the old
    # record finds the row changed and leaves it.
    DRIVER.apply(t, log(8, (1, rec(2, "two"))), epoch=1)
    DRIVER.apply(t, log(9, (-1, rec(2))), epoch=1)
    # The delete first: the row goes, then comes back new.
    DRIVER.apply(t, log(10, (-1, rec(3))), epoch=1)
    assert as_records(read(path).to_pylist()) == Counter({rec(1, "one"): 1, rec(2, "two"): 1})
    DRIVER.apply(t, log(11, (1, rec(3, "three"))), epoch=1)
    # A delete of a record the row no longer equals, or of a key not there: nothing.
    DRIVER.apply(t, log(12, (-1, rec(1)), (-1, rec(99))), epoch=1)
    # Changes that cancel out: the position moves alone.
    applied = DRIVER.apply(t, log(14, (1, rec(5)), (-1, rec(5))), epoch=1)
    table = DeltaTable(str(path))
    assert applied.version == table.version()
    assert as_records(read(path).to_pylist()) == Counter(
        {rec(1, "one"): 1, rec(2, "two"): 1, rec(3, "three"): 1}
    )
    assert table.transaction_version(t.uid) == 15
    # One commit per batch: a MERGE, or (no row changed: deltalake makes no MERGE commit)
    # a commit of the position alone.
    history = [h["operation"] for h in table.history()]
    assert history == [
        *["WRITE", "WRITE", "MERGE", "MERGE", "WRITE", "MERGE", "MERGE", "MERGE"],
        "CREATE TABLE",
    ]
    assert read(path).schema.names == ["id", "name", "total"]


def test_mode_rows_nulls_compare_equal_and_a_compound_key(sinks: Path) -> None:
    t = target(columns={"a": "string", "b": "integer", "note": "string"}, key=["a", "b"])
    path = sinks / "tables" / "t"
    one = store.canonical({"a": "x", "b": 1})  # note is null
    two = store.canonical({"a": "x", "b": 2, "note": "n"})
    DRIVER.apply(t, log(1, (1, one), (1, two)), epoch=1)
    DRIVER.apply(t, log(3, (-1, one)), epoch=1)
    assert read(path).to_pylist() == [{"a": "x", "b": 2, "note": "n"}]


def test_a_batch_that_is_not_keyed_so_is_refused(sinks: Path) -> None:
    t = target()
    for changes in (
        [(1, rec(1)), (1, rec(1, "other"))],  # two records of one key inserted
        [(1, rec(1)), (1, rec(1))],  # two copies of one record
    ):
        with pytest.raises(TransportError) as caught:
            DRIVER.apply(t, log(1, *changes), epoch=1)
        assert caught.value.poison and "not keyed by id" in str(caught.value)


def test_two_writers_of_one_merge_batch_commit_it_once(
    app: Flask, sinks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = target()
    path = sinks / "tables" / "t"
    DRIVER.apply(t, log(1, (1, rec(1)), (1, rec(2))), epoch=1)
    batch = log(3, (-1, rec(1)), (1, rec(1, "new")), (1, rec(3)))
    results = race_two_writers(app, monkeypatch, lambda epoch: DRIVER.apply(t, batch, epoch=epoch))
    assert all(isinstance(r, Applied) for r in results), results
    assert sorted(r.skipped for r in results if isinstance(r, Applied)) == [False, True]
    table = DeltaTable(str(path))
    assert [h["operation"] for h in table.history()] == ["MERGE", "MERGE", "CREATE TABLE"]
    assert table.transaction_version(t.uid) == 5
    assert as_records(read(path).to_pylist()) == Counter({rec(1, "new"): 1, rec(2): 1, rec(3): 1})


def test_mode_rows_reset_is_one_overwrite_commit_of_the_snapshot(sinks: Path) -> None:
    t = target()
    path = sinks / "tables" / "t"
    DRIVER.apply(t, log(1, *[(1, rec(i)) for i in range(5)]), epoch=1)
    before = DeltaTable(str(path)).version()
    reset = DRIVER.begin_reset(t, 2)
    snapshot = [rec(i, "s") for i in range(3, 9)]
    assert reset.append(snapshot[:4]) == sum(len(r) for r in snapshot[:4])
    reset.append(snapshot[4:])
    fenced: list[int] = []
    version = reset.switch_in(50, lambda: fenced.append(DeltaTable(str(path)).version()))
    reset.discard()
    table = DeltaTable(str(path))
    assert fenced == [before] and version == before + 1 == table.version()
    assert table.history(1)[0]["operationParameters"]["mode"] == "Overwrite"
    assert table.transaction_version(t.uid) == 50
    assert as_records(read(path).to_pylist()) == Counter(snapshot)
    assert sorted(p.name for p in path.parent.iterdir()) == ["t"]
    # Streaming goes on from the snapshot, merging into it.
    DRIVER.apply(t, log(51, (-1, rec(3, "s")), (1, rec(4, "changed"))), epoch=2)
    assert as_records(read(path).to_pylist()) == Counter(snapshot[2:]) + Counter(
        {rec(4, "changed"): 1}
    ) - Counter({rec(4, "s"): 1})


def test_a_snapshot_with_a_key_twice_or_a_bad_value_fails_the_reset_and_keeps_the_table(
    sinks: Path,
) -> None:
    t = target()
    path = sinks / "tables" / "t"
    DRIVER.apply(t, log(1, (1, rec(1))), epoch=1)
    for batches, says in (
        ([[rec(1), rec(2)], [rec(2, "again")]], "two records with the key [2]"),
        ([[rec(1)], ['{"id":2,"total":"x"}']], "cannot be a double"),
    ):
        reset = DRIVER.begin_reset(t, 2)
        try:
            reset.append(batches[0])
            with pytest.raises(TransportError) as caught:
                reset.append(batches[1])
        finally:
            reset.discard()
        assert caught.value.poison and says in str(caught.value)
    assert DeltaTable(str(path)).version() == 1
    assert as_records(read(path).to_pylist()) == Counter({rec(1): 1})


def test_a_table_with_other_columns_is_not_written(sinks: Path) -> None:
    DRIVER.apply(target("changes"), log(1, (1, rec(1))), epoch=1)
    with pytest.raises(TransportError) as caught:
        DRIVER.apply(target(), log(1, (1, rec(1))), epoch=1)
    assert "its columns are not id (long)" in str(caught.value)
    assert not caught.value.poison


# -- through the service ----------------------------------------------------------------


def deliver(app: Flask) -> None:
    with app.app_context():
        try:
            DeliveryWorker("w").run_pending()
        finally:
            db.session.remove()


def lake_pipeline(api, client, config: dict[str, Any]) -> None:
    api.create_pipeline()
    body = {"name": "lake", "transport": {"name": "delta", "config": config}}
    r = client.post(CONNECTORS, json=body)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["transport"]["config"] == config
    api.action("orders", "start")


def stats(client) -> dict[str, Any]:
    return client.get(f"{CONNECTORS}/lake/stats").get_json()


def keyed_workload(seed: int, n: int) -> list[dict]:
    """Changes of a view keyed by id: inserts, deletes and updates (delete, then insert)."""
    rng = random.Random(seed)
    live: dict[int, dict] = {}
    changes: list[dict] = []
    for i in range(n):
        roll = rng.random()
        if live and roll < 0.25:
            changes.append({"delete": live.pop(rng.choice(sorted(live)))})
        elif live and roll < 0.5:
            key = rng.choice(sorted(live))
            new = {"id": key, "name": f"v{i}", "total": rng.randrange(1000) / 4}
            changes += [{"delete": live[key]}, {"insert": new}]
            live[key] = new
        else:
            live[i] = {"id": i, "name": f"n{i}", "total": i / 2}
            changes.append({"insert": live[i]})
    return changes


@pytest.mark.parametrize("mode", ["changes", "rows"])
def test_the_table_read_back_is_the_view_after_batches_and_a_reset(
    app: Flask, api, client, run_resets, mode: str
) -> None:
    app.config.update(DELIVERY_BATCH_SIZE=7, REPLAY_BATCH_SIZE=13)
    config: dict[str, Any] = {"path": "tables/t", "mode": mode, "columns": COLUMNS}
    if mode == "rows":
        config["key"] = ["id"]
    lake_pipeline(api, client, config)
    path = Path(app.config["SINK_DIR"]) / "default" / "tables" / "t"
    changes = keyed_workload(5, 300)

    def table() -> Counter[str]:
        return as_records(read(path).to_pylist()) if mode == "rows" else folded(path)

    for start in range(0, len(changes), 50):
        assert client.post(CHANGES, json=changes[start : start + 50]).status_code == 200
        deliver(app)
        assert table() == view_contents(app)
    assert stats(client)["sync_state"] == "in_sync"
    token = api.reset(connector="lake")
    run_resets()
    assert api.status(token).get_json()["status"] == "complete"
    assert table() == view_contents(app)
    assert DeltaTable(str(path)).history(1)[0]["operationParameters"]["mode"] == "Overwrite"
    assert client.post(CHANGES, json=keyed_workload(6, 40)[:1]).status_code == 200
    deliver(app)
    assert table() == view_contents(app)
    body = stats(client)
    assert body["delivered_seq"] == body["log_end"]
    assert DeltaTable(str(path)).transaction_version(connector_uid(app)) == body["log_end"]


@pytest.mark.parametrize(
    ("mode", "bad"),
    [
        ("rows", {"id": 1000, "name": "x", "colour": "red"}),
        ("changes", {"id": 1000, "name": "x", "total": "lots"}),
    ],
)
def test_a_refused_batch_fails_the_connector_with_its_reason_and_a_reset_brings_it_back(
    app: Flask, api, client, run_resets, mode: str, bad: dict
) -> None:
    config: dict[str, Any] = {"path": "tables/t", "mode": mode, "columns": COLUMNS}
    if mode == "rows":
        config["key"] = ["id"]
    lake_pipeline(api, client, config)
    path = Path(app.config["SINK_DIR"]) / "default" / "tables" / "t"
    good = [{"insert": {"id": i, "name": f"n{i}", "total": 1.0}} for i in range(3)]
    assert client.post(CHANGES, json=good).status_code == 200
    deliver(app)
    assert client.post(CHANGES, json=[{"insert": bad}]).status_code == 200
    deliver(app)
    body = stats(client)
    assert (body["health"], body["sync_state"]) == ("failed", "failed"), body
    reason = "is not one of its columns" if mode == "rows" else "cannot be a double"
    assert reason in body["sync_reason"] and "'tables/t'" in body["sync_reason"]
    assert reason in body["last_error"]
    assert body["delivered_seq"] == 3
    # More changes wait; the worker sends nothing while the connector is failed.
    assert client.post(CHANGES, json=[{"insert": {"id": 7, "total": 2.0}}]).status_code == 200
    deliver(app)
    assert DeltaTable(str(path)).transaction_version(connector_uid(app)) == 3
    # A reset while the view still holds the record is refused the same way.
    token = api.reset(connector="lake")
    run_resets()
    status = api.status(token).get_json()
    assert status["status"] == "failed" and reason in status["error"]
    # The record leaves the view: a reset brings the connector back, and it streams on.
    assert client.post(CHANGES, json=[{"delete": bad}]).status_code == 200
    token = api.reset(connector="lake")
    run_resets()
    assert api.status(token).get_json()["status"] == "complete"
    assert client.post(CHANGES, json=[{"insert": {"id": 8, "total": 3.0}}]).status_code == 200
    deliver(app)
    body = stats(client)
    assert (body["health"], body["sync_state"]) == ("healthy", "in_sync"), body
    assert body["delivered_seq"] == body["log_end"]
    table = as_records(read(path).to_pylist()) if mode == "rows" else folded(path)
    assert table == view_contents(app)


def connector_uid(app: Flask) -> str:
    from app.connectors.models import Connector

    with app.app_context():
        uid = db.session.execute(sa.select(Connector.uid)).scalar_one()
        db.session.remove()
    return str(uid)


def test_records_as_json_strings_still_land_when_no_columns_are_declared(
    app: Flask, api, client
) -> None:
    lake_pipeline(api, client, {"path": "tables/t", "mode": "changes"})
    record = {"id": 1, "anything": {"nested": [1, 2]}}
    assert client.post(CHANGES, json=[{"insert": record}]).status_code == 200
    deliver(app)
    rows = read(Path(app.config["SINK_DIR"]) / "default" / "tables" / "t").to_pylist()
    assert [json.loads(r["record"]) for r in rows] == [record]


def test_the_merge_benchmark_runs_and_checks_its_table(tmp_path: Path) -> None:
    """``python -m bench.delta_merge`` at a small size: one MERGE of the batch, rows counted."""
    from bench.delta_merge import run

    timings = run(2_000, 200, tmp_path)
    assert set(timings) == {"reset", "merge"}
    table = DeltaTable(str(tmp_path / "default" / "keyed"))
    assert table.to_pyarrow_dataset().count_rows() == 2_100
    assert [h["operation"] for h in table.history()] == ["MERGE", "WRITE", "CREATE TABLE"]


# -- read back with Polars --------------------------------------------------------------

TYPED = {**COLUMNS, "at": "timestamp", "price": "decimal(10,2)"}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "table-sinks.md"


def typed_record(record: dict[str, Any]) -> dict[str, Any]:
    """A keyed workload's record with a timestamp and a decimal, both a function of its id."""
    i = record["id"]
    return {**record, "at": f"2024-05-{1 + i % 28:02d}T12:{i % 60:02d}:00Z", "price": i % 997 / 4}


def typed_view(app: Flask, columns: dict[str, str]) -> Counter[frozenset]:
    """The view's records, converted into the declared columns (nulls left out), with weights."""
    parser = delta.Columns(columns)
    return Counter(
        {frozenset(parser.parse(text).items()): w for text, w in view_contents(app).items()}
    )


def frame_rows(frame: Any, weight: str | None = None) -> Counter[frozenset]:
    """A Polars frame's rows (nulls left out); ``weight`` names a column of copies."""
    rows: Counter[frozenset] = Counter()
    for row in frame.to_dicts():
        copies = row.pop(weight) if weight else 1
        rows[frozenset((k, v) for k, v in row.items() if v is not None)] += copies
    return rows


def polars_block() -> str:
    """The Polars reader of docs/table-sinks.md, as a reader would paste it."""
    blocks = [b for b in DOCS.read_text().split("```python\n")[1:] if "import polars" in b]
    assert len(blocks) == 1, "one Polars block in docs/table-sinks.md"
    return blocks[0].split("\n```")[0]


def test_the_polars_queries_of_the_docs_read_the_view(
    app: Flask, api, client, run_resets, capsys: pytest.CaptureFixture[str]
) -> None:
    """The docs' Polars block, run on a keyed table and a change table (typed columns, a
    timestamp and a decimal among them) of one view, reads that view: after batches
    (inserts, updates, deletes) and after a reset of each."""
    app.config.update(DELIVERY_BATCH_SIZE=11, REPLAY_BATCH_SIZE=17)
    api.create_pipeline()
    for name, path, mode in (("keyed", "totals", "rows"), ("changes", "changes", "changes")):
        config: dict[str, Any] = {"path": f"tables/{path}", "mode": mode, "columns": TYPED}
        if mode == "rows":
            config["key"] = ["id"]
        body = {"name": name, "transport": {"name": "delta", "config": config}}
        assert client.post(CONNECTORS, json=body).status_code == 201
    api.action("orders", "start")
    code = polars_block().replace("instance/sinks", app.config["SINK_DIR"])
    changes = [
        {op: typed_record(record) for op, record in change.items()}
        for change in keyed_workload(8, 400)
    ]

    def read_back() -> None:
        found: dict[str, Any] = {}
        exec(code, found)  # noqa: S102 (the docs' own block)
        expected = typed_view(app, TYPED)
        assert frame_rows(found["keyed"].collect()) == expected
        assert frame_rows(found["view"], weight="copies") == expected
        assert str(sum(expected.values())) in capsys.readouterr().out

    for start in range(0, len(changes), 100):
        assert client.post(CHANGES, json=changes[start : start + 100]).status_code == 200
        deliver(app)
        read_back()
    for connector in ("keyed", "changes"):
        token = api.reset(connector=connector)
        run_resets()
        assert api.status(token).get_json()["status"] == "complete"
    read_back()


# -- a reader during a reset ------------------------------------------------------------

BIG = 200_000
GONE_EVERY = 40  # every 40th record leaves the view before the second reset: 5,000


def push(app: Flask, changes: list[tuple[int, str]]) -> None:
    """Store changes in the view as the API would, in one transaction (no HTTP, for speed)."""
    from app.pipelines.service import get_pipeline
    from app.view_data import service as view_data

    with app.app_context():
        view = view_data.writable_view(get_pipeline("default", "orders"), "totals")
        view_data.push_changes(view, changes)
        db.session.remove()


def count_rows(path: Path, reader: int) -> int:
    """The table's row count as a reader sees it, opening the table anew each time:
    with deltalake, or with Polars, in turn."""
    if reader % 2:
        import polars as pl

        return int(pl.scan_delta(str(path)).select(pl.len()).collect().item())
    return DeltaTable(str(path)).to_pyarrow_dataset().count_rows()


@pytest.mark.slow
def test_a_reader_counting_rows_during_a_200k_record_reset_sees_the_old_count_or_the_new(
    app: Flask, api, client, run_resets
) -> None:
    """A keyed table of 200,000 rows, reset through the service to a view 5,000 records
    smaller: a reader counting rows all along (deltalake and Polars in turn, the table
    opened anew each time) sees 200,000 until the overwrite commit, then 195,000."""
    config = {"path": "tables/t", "mode": "rows", "columns": COLUMNS, "key": ["id"]}
    lake_pipeline(api, client, config)
    path = Path(app.config["SINK_DIR"]) / "default" / "tables" / "t"
    for start in range(0, BIG, 20_000):
        push(app, [(store.INSERT, rec(i)) for i in range(start, start + 20_000)])
    first = api.reset(connector="lake")
    run_resets()
    assert api.status(first).get_json()["status"] == "complete"
    old = count_rows(path, 0)
    assert old == BIG
    push(app, [(store.DELETE, rec(i)) for i in range(0, BIG, GONE_EVERY)])
    new = BIG - BIG // GONE_EVERY

    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                seen.append(count_rows(path, len(seen)))
            except BaseException as exc:
                errors.append(exc)
                return

    token = api.reset(connector="lake")
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        while len(seen) < 3 and not errors:  # the reader runs before the reset...
            time.sleep(0.01)
        before = len(seen)
        assert run_resets() == 1
        during = len(seen) - before
        while len(seen) < before + during + 3 and not errors:  # ...and after it
            time.sleep(0.01)
    finally:
        stop.set()
        reader.join(60)
    assert not errors, errors
    assert api.status(token).get_json()["status"] == "complete"
    assert set(seen) == {old, new}, Counter(seen)
    flip = seen.index(new)
    assert set(seen[flip:]) == {new}, "the old count seen again after the new one"
    assert during >= 3, f"only {during} reads while the reset ran"
    assert as_records(read(path).to_pylist()) == view_contents(app)
