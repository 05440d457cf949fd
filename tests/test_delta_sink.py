"""The delta transport: real Delta tables under the tenant's sink folder, read back with deltalake.

Tables are read with ``to_pyarrow_dataset().to_table(use_threads=False)``:
the same rows as ``to_pyarrow_table()``, without pyarrow's scan thread pool,
whose threads can abort the interpreter when it exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable
from flask import Flask

from app.delivery.sinks import PipelineRef, SinkTarget, ViewRef
from app.errors import InvalidRequest
from app.transports import delta
from app.transports.base import TransportError
from app.transports.delta import DeltaTransport
from app.transports.tables import Applied, LogRow, SinkMoved, is_table_sink

DRIVER = DeltaTransport()


@pytest.fixture
def sinks(app: Flask) -> Iterator[Path]:
    """The default tenant's sink folder, created, with an app context pushed."""
    folder = Path(app.config["SINK_DIR"]) / "default"
    folder.mkdir(parents=True, exist_ok=True)
    with app.app_context():
        yield folder


def target(path: str = "tables/orders", uid: str | None = None) -> SinkTarget:
    return SinkTarget(
        id=1,
        uid=uid or str(uuid4()),
        name="c",
        transport="delta",
        config={"path": path},
        view_id=1,
        view=ViewRef("v", PipelineRef("p", "default")),
    )


def rec(i: int) -> str:
    """A record's canonical JSON text."""
    return json.dumps({"id": i, "name": f"customer {i}"}, separators=(",", ":"), sort_keys=True)


def inserts(first: int, ids: range | list[int]) -> list[LogRow]:
    """Log rows inserting records ``ids``, from seq ``first`` on."""
    return [(first + n, 1, rec(i)) for n, i in enumerate(ids)]


def read(path: Path) -> pa.Table:
    return DeltaTable(str(path)).to_pyarrow_dataset().to_table(use_threads=False)


def fold(path: Path) -> Counter[str]:
    """The view the table holds: +1 per insert row, -1 per delete row."""
    rows = read(path).to_pydict()
    view: Counter[str] = Counter()
    for op, record in zip(rows["op"], rows["record"], strict=True):
        view[record] += 1 if op == "insert" else -1
    return +view


def data_files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.suffix == ".parquet"}


def snapshot(t: SinkTarget, epoch: int, seq: int, records: list[str], batch: int = 5000) -> int:
    """Reset the table to ``records`` at ``seq``; return the new version."""
    reset = DRIVER.begin_reset(t, epoch)
    try:
        for start in range(0, len(records), batch):
            reset.append(records[start : start + batch])
        version = reset.switch_in(seq, lambda: None)
    finally:
        reset.discard()
    assert version is not None
    return version


# -- settings ---------------------------------------------------------------------------


def test_the_driver_is_a_table_sink() -> None:
    assert is_table_sink(DRIVER)
    assert DRIVER.name == "delta"


def test_valid_settings_are_normalised(sinks: Path) -> None:
    assert DRIVER.validate_config({"path": "tables/orders"}, tenant="default") == {
        "path": "tables/orders",
        "mode": "changes",
    }
    (sinks / "existing").mkdir()
    config = {"path": "existing", "mode": "changes"}
    assert DRIVER.validate_config(config, tenant="default") == config
    assert DRIVER.shown_config(config) == config


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"path": "t", "colour": "red"}, "transport.config.colour"),
        ({"path": "t", "mode": "merge"}, "transport.config.mode"),
        ({"path": "t", "mode": None}, "transport.config.mode"),
        ({}, "transport.config.path"),
        ({"path": ""}, "transport.config.path"),
        ({"path": 3}, "transport.config.path"),
        ({"path": "../escape"}, "transport.config.path"),
        ({"path": "a/../../escape"}, "transport.config.path"),
        ({"path": "/etc"}, "transport.config.path"),
        ({"path": "bad\x00name"}, "transport.config.path"),
        ({"path": "a_file"}, "transport.config.path"),
        ({"path": ".t.reset-3"}, "transport.config.path"),
    ],
)
def test_invalid_settings_are_400_naming_the_field(
    sinks: Path, config: dict[str, Any], field: str
) -> None:
    (sinks / "a_file").write_text("not a folder")
    with pytest.raises(InvalidRequest) as caught:
        DRIVER.validate_config(config, tenant="default")
    assert caught.value.status_code == 400
    assert list(caught.value.details) == [field]
    assert str(sinks.parent) not in json.dumps(caught.value.details)


def test_sink_key_is_the_resolved_folder(sinks: Path) -> None:
    assert DRIVER.sink_key({"path": "t"}, "default") == "delta:default/t"
    assert DRIVER.sink_key({"path": "./t"}, "default") == "delta:default/t"
    assert DRIVER.sink_key({"path": str(sinks / "t")}, "default") == "delta:default/t"
    assert DRIVER.sink_key({"path": "t"}, "other") == "delta:other/t"


def test_config_schema() -> None:
    schema = DRIVER.config_schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["path"]
    assert schema["properties"]["path"]["type"] == "string"
    assert schema["properties"]["path"]["minLength"] == 1
    assert schema["properties"]["path"]["example"] == "tables/orders"
    assert schema["properties"]["path"]["description"]
    assert schema["properties"]["mode"]["enum"] == ["changes", "rows"]
    assert schema["properties"]["key"]["minItems"] == 1
    assert schema["properties"]["columns"]["minProperties"] == 1


# -- streaming --------------------------------------------------------------------------


def test_apply_creates_the_table_and_records_the_position(sinks: Path) -> None:
    t = target()
    assert DRIVER.position(t) is None
    rows = inserts(1, range(3))
    applied = DRIVER.apply(t, rows, epoch=1)
    # Version 0 creates the table, empty; version 1 is the batch.
    assert applied == Applied(sum(len(r[2].encode()) for r in rows), 1)
    path = sinks / "tables" / "orders"
    assert [h["operation"] for h in DeltaTable(str(path)).history()] == ["WRITE", "CREATE TABLE"]
    assert DRIVER.position(t) == 3
    assert DeltaTable(str(path)).transaction_version(t.uid) == 3
    assert read(path).sort_by("seq").to_pylist() == [
        {"seq": s, "op": "insert", "record": text} for s, _, text in rows
    ]
    assert read(path).schema == delta.SCHEMA
    # Another connector's position is its own.
    assert DRIVER.position(target(uid=str(uuid4()))) is None
    applied = DRIVER.apply(t, inserts(4, range(3, 5)), epoch=1)
    assert applied.version == 2
    assert not applied.skipped
    assert DRIVER.position(t) == 5


def test_size_counts_utf8_bytes(sinks: Path) -> None:
    text = json.dumps({"name": "Zoë ✓"}, ensure_ascii=False)
    assert DRIVER.apply(target(), [(1, 1, text)], epoch=1).size == len(text.encode("utf-8"))
    assert read(sinks / "tables" / "orders")["record"].to_pylist() == [text]


def test_a_batch_already_held_is_skipped_and_writes_nothing(sinks: Path) -> None:
    t = target()
    DRIVER.apply(t, inserts(1, range(3)), epoch=1)
    DRIVER.apply(t, inserts(4, range(3, 6)), epoch=1)
    path = sinks / "tables" / "orders"
    version = DeltaTable(str(path)).version()
    for rows in (inserts(4, range(3, 6)), inserts(1, range(3)), inserts(5, range(2))):
        assert DRIVER.apply(t, rows, epoch=2) == Applied(0, None, skipped=True)
    assert DeltaTable(str(path)).version() == version
    assert read(path).num_rows == 6
    assert DRIVER.position(t) == 6


def test_a_batch_after_a_gap_raises_sink_moved_with_the_position(sinks: Path) -> None:
    t = target()
    with pytest.raises(SinkMoved) as caught:
        DRIVER.apply(t, inserts(5, range(2)), epoch=1)
    assert caught.value.position is None
    assert not (sinks / "tables" / "orders" / "_delta_log").exists()
    DRIVER.apply(t, inserts(1, range(3)), epoch=1)
    with pytest.raises(SinkMoved) as caught:
        DRIVER.apply(t, inserts(5, range(2)), epoch=1)
    assert caught.value.position == 3
    # A batch that starts before the position and ends after it is not split.
    with pytest.raises(SinkMoved) as caught:
        DRIVER.apply(t, inserts(3, range(2)), epoch=1)
    assert caught.value.position == 3
    assert DeltaTable(str(sinks / "tables" / "orders")).version() == 1


def race_two_writers(
    app: Flask, monkeypatch: pytest.MonkeyPatch, apply: Callable[[int], Applied]
) -> list[Applied | BaseException]:
    """Run ``apply(epoch)`` in two threads (epochs 2 and 3); return what each gave or raised.

    Both load the table (at the same version) before either commits: the
    race a stale writer loses at the commit.
    """
    loaded = threading.Barrier(2, timeout=30)
    load = delta._Table.load
    waited: set[int] = set()

    def load_then_wait(self: Any, action: str) -> Any:
        table = load(self, action)
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            loaded.wait()
        return table

    monkeypatch.setattr(delta._Table, "load", load_then_wait)
    results: list[Applied | BaseException] = []

    def writer(epoch: int) -> None:
        with app.app_context():
            try:
                results.append(apply(epoch))
            except BaseException as exc:
                results.append(exc)

    threads = [threading.Thread(target=writer, args=(e,)) for e in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.parametrize("existing", [True, False], ids=["append", "create"])
def test_two_writers_of_one_batch_commit_it_once(
    app: Flask, sinks: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    t = target()
    path = sinks / "tables" / "orders"
    if existing:
        DRIVER.apply(t, inserts(1, range(3)), epoch=1)
    first = 4 if existing else 1
    results = race_two_writers(
        app, monkeypatch, lambda epoch: DRIVER.apply(t, inserts(first, range(10, 13)), epoch=epoch)
    )
    assert all(isinstance(r, Applied) for r in results), results
    assert sorted(r.skipped for r in results if isinstance(r, Applied)) == [False, True]
    table = DeltaTable(str(path))
    writes = [h for h in table.history() if h["operation"] == "WRITE"]
    assert len(writes) == (2 if existing else 1)
    # Racing creators may both create the (empty) table: nothing else is doubled.
    assert table.version() - len(writes) in (0, 1)
    assert table.transaction_version(t.uid) == first + 2
    assert sorted(read(path)["seq"].to_pylist()) == [*range(1, first), *range(first, first + 3)]


def test_deletes_are_rows_and_the_fold_is_the_view(sinks: Path) -> None:
    t = target()
    rows: list[LogRow] = [
        (1, 1, rec(1)),
        (2, 1, rec(2)),
        (3, 1, rec(2)),  # a second copy
        (4, -1, rec(1)),
        (5, 1, rec(3)),
    ]
    DRIVER.apply(t, rows[:3], epoch=1)
    DRIVER.apply(t, rows[3:], epoch=1)
    DRIVER.apply(t, [(6, -1, rec(2))], epoch=1)
    path = sinks / "tables" / "orders"
    table = read(path).sort_by("seq").to_pydict()  # files come in no set order
    assert table["seq"] == [1, 2, 3, 4, 5, 6]
    assert table["op"] == ["insert", "insert", "insert", "delete", "insert", "delete"]
    assert fold(path) == Counter({rec(2): 1, rec(3): 1})
    history = DeltaTable(str(path)).history()
    assert [h["operation"] for h in history] == ["WRITE"] * 3 + ["CREATE TABLE"]
    assert {h["operationParameters"].get("mode") for h in history[:3]} == {"Append"}


def test_a_path_that_became_a_file_or_a_foreign_table_is_a_transport_error(
    sinks: Path,
) -> None:
    (sinks / "tables").mkdir()
    (sinks / "tables" / "orders").write_text("a file")
    with pytest.raises(TransportError) as caught:
        DRIVER.apply(target(), inserts(1, range(2)), epoch=1)
    assert "'tables/orders'" in str(caught.value)
    assert str(sinks) not in str(caught.value)
    os.unlink(sinks / "tables" / "orders")
    from deltalake import write_deltalake

    write_deltalake(str(sinks / "tables" / "orders"), pa.table({"other": [1, 2]}))
    with pytest.raises(TransportError) as caught:
        DRIVER.apply(target(), inserts(1, range(2)), epoch=1)
    message = str(caught.value)
    assert "'tables/orders'" in message
    assert str(sinks.parent) not in message
    assert "\n" not in message
    with pytest.raises(TransportError):
        snapshot(target(), 1, 5, [rec(1)])
    assert DeltaTable(str(sinks / "tables" / "orders")).version() == 0


# -- reset ------------------------------------------------------------------------------


def test_reset_is_one_overwrite_commit_holding_the_snapshot(sinks: Path) -> None:
    t = target()
    path = sinks / "tables" / "orders"
    DRIVER.apply(t, inserts(1, range(5)), epoch=1)
    DRIVER.apply(t, [(6, -1, rec(0))], epoch=1)
    before = DeltaTable(str(path)).version()
    records = [rec(i) for i in range(100, 112)] + [rec(100)]  # a record of weight 2
    reset = DRIVER.begin_reset(t, 2)
    sizes = [reset.append(records[i : i + 5]) for i in range(0, len(records), 5)]
    assert sum(sizes) == sum(len(r.encode()) for r in records)
    assert reset.append([]) == 0
    fenced: list[int] = []
    version = reset.switch_in(40, lambda: fenced.append(DeltaTable(str(path)).version()))
    reset.discard()
    assert fenced == [before]  # called once, before the commit
    assert version == before + 1
    table = DeltaTable(str(path))
    assert table.version() == before + 1
    newest = table.history(1)[0]
    assert newest["operation"] == "WRITE"
    assert newest["operationParameters"]["mode"] == "Overwrite"
    assert len(table.history()) == before + 2
    assert table.transaction_version(t.uid) == 40
    assert DRIVER.position(t) == 40
    contents = read(path).to_pydict()
    assert set(contents["seq"]) == {40}
    assert set(contents["op"]) == {"insert"}
    assert Counter(contents["record"]) == Counter(records)
    assert sorted(p.name for p in path.parent.iterdir()) == ["orders"]  # no staging left
    # Streaming goes on from the snapshot's seq.
    assert DRIVER.apply(t, inserts(7, range(1)), epoch=2).skipped
    with pytest.raises(SinkMoved) as caught:
        DRIVER.apply(t, inserts(42, range(1)), epoch=2)
    assert caught.value.position == 40
    DRIVER.apply(t, [(41, -1, rec(100))], epoch=2)
    assert fold(path) == Counter(records) - Counter([rec(100)])


def test_a_large_snapshot_is_split_into_data_files(
    sinks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delta, "DATA_FILE_TEXT_BYTES", 10_000)
    t = target()
    records = [rec(i) for i in range(2000)]
    snapshot(t, 1, 5, records, batch=100)
    path = sinks / "tables" / "orders"
    table = DeltaTable(str(path))
    assert len(table.file_uris()) > 3
    assert data_files(path) == {os.path.basename(uri) for uri in table.file_uris()}
    assert fold(path) == Counter(records)
    # The statistics readers use to count and to skip files are right.
    assert table.to_pyarrow_dataset().count_rows() == 2000
    dataset = table.to_pyarrow_dataset()
    for seq, count in ((5, 2000), (4, 0)):
        assert dataset.to_table(filter=pc.field("seq") == seq, use_threads=False).num_rows == count


def test_reset_of_a_missing_table_creates_it(sinks: Path) -> None:
    t = target("new/table")
    assert snapshot(t, 1, 7, [rec(1), rec(2)]) == 1
    path = sinks / "new" / "table"
    assert DRIVER.position(t) == 7
    assert fold(path) == Counter([rec(1), rec(2)])
    history = DeltaTable(str(path)).history()
    assert [h["operation"] for h in history] == ["WRITE", "CREATE TABLE"]
    assert history[0]["operationParameters"]["mode"] == "Overwrite"


def test_a_raising_fence_commits_nothing(sinks: Path) -> None:
    t = target()
    path = sinks / "tables" / "orders"
    DRIVER.apply(t, inserts(1, range(4)), epoch=1)
    files = data_files(path)
    version = DeltaTable(str(path)).version()

    class LeaseLost(Exception):
        pass

    lost = LeaseLost("the lease is gone")

    def fence() -> None:
        raise lost

    reset = DRIVER.begin_reset(t, 2)
    reset.append([rec(i) for i in range(50, 60)])
    staging = path.parent / ".orders.reset-2"
    assert staging.is_dir()
    with pytest.raises(LeaseLost) as caught:
        reset.switch_in(20, fence)
    assert caught.value is lost
    assert DeltaTable(str(path)).version() == version
    assert DRIVER.position(t) == 4
    assert sorted(read(path)["seq"].to_pylist()) == [1, 2, 3, 4]
    assert data_files(path) == files  # the new data files are gone
    assert staging.is_dir()
    reset.discard()
    assert not staging.exists()
    reset.discard()  # twice is fine


def test_begin_reset_removes_lower_epochs_staging_only(sinks: Path) -> None:
    t = target()
    parent = sinks / "tables"
    parent.mkdir()
    for epoch in (1, 4, 9):
        (parent / f".orders.reset-{epoch}").mkdir()
        (parent / f".orders.reset-{epoch}" / "part-000000.parquet").write_bytes(b"x")
    (parent / ".other.reset-1").mkdir()
    reset = DRIVER.begin_reset(t, 5)
    assert sorted(p.name for p in parent.iterdir()) == [
        ".orders.reset-5",
        ".orders.reset-9",
        ".other.reset-1",
    ]
    assert (parent / ".orders.reset-9" / "part-000000.parquet").exists()
    reset.discard()
    assert not (parent / ".orders.reset-5").exists()


def test_an_empty_snapshot_empties_the_table_and_records_the_position(sinks: Path) -> None:
    t = target()
    path = sinks / "tables" / "orders"
    DRIVER.apply(t, inserts(1, range(3)), epoch=1)
    assert snapshot(t, 2, 9, []) == 2
    table = DeltaTable(str(path))
    assert table.history(1)[0]["operationParameters"]["mode"] == "Overwrite"
    assert table.transaction_version(t.uid) == 9
    assert read(path).num_rows == 0
    assert read(path).schema == delta.SCHEMA
    # And on a missing table.
    other = target("empty")
    assert snapshot(other, 1, 3, []) == 1
    assert DRIVER.position(other) == 3
    assert read(sinks / "empty").num_rows == 0


def test_readers_see_the_old_table_or_the_new_one_during_a_200k_record_reset(sinks: Path) -> None:
    t = target()
    path = sinks / "tables" / "orders"
    DRIVER.apply(t, inserts(1, range(1000)), epoch=1)
    seen: Counter[int] = Counter()
    errors: list[BaseException] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                seen[read(path).num_rows] += 1
            except BaseException as exc:
                errors.append(exc)
                return

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        while sum(seen.values()) < 3:  # the reader runs before the reset...
            time.sleep(0.01)
        snapshot(t, 2, 2000, [rec(i) for i in range(200_000)], batch=10_000)
        polls = sum(seen.values())
        while sum(seen.values()) < polls + 3:  # ...and after it
            time.sleep(0.01)
    finally:
        stop.set()
        reader.join(60)
    assert not errors
    assert set(seen) == {1000, 200_000}, seen
    assert fold(path) == Counter(rec(i) for i in range(200_000))


def test_reset_timing_of_200k_records(sinks: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = target()
    DRIVER.apply(t, inserts(1, range(10)), epoch=1)
    # About 200 bytes each, not all alike (a hash in each).
    records = [
        json.dumps(
            {"id": i, "key": hashlib.sha256(str(i).encode()).hexdigest(), "note": "x" * (i % 97)},
            separators=(",", ":"),
            sort_keys=True,
        )
        for i in range(200_000)
    ]
    reset = DRIVER.begin_reset(t, 2)
    started = time.perf_counter()
    for start in range(0, len(records), 5000):
        reset.append(records[start : start + 5000])
    staged = time.perf_counter()
    reset.switch_in(300_000, lambda: None)
    switched = time.perf_counter()
    reset.discard()
    path = sinks / "tables" / "orders"
    size = sum(os.path.getsize(path / name) for name in data_files(path))
    with capsys.disabled():
        print(
            f"\ndelta reset of 200k records ({sum(len(r) for r in records) // 2**20} MiB of text):"
            f" staging {staged - started:.2f}s, switch_in {switched - staged:.2f}s,"
            f" data files {size / 2**20:.1f} MiB"
        )
    assert DRIVER.position(t) == 300_000
    assert DeltaTable(str(path)).to_pyarrow_dataset().count_rows() == 200_000


def test_a_switch_longer_than_the_lease_renews_it_and_no_one_takes_the_reset_over(
    app: Flask, api, client, monkeypatch
) -> None:
    """Rewriting the staged parts takes three leases here (each part read slowly, as on a
    busy disk): the executor renews its lease as it goes, so a rival executor trying all
    along never takes the reset over (nor removes the staging folder being read), and
    the reset completes at its first attempt."""
    from app.extensions import db
    from app.resets.executor import ResetExecutor

    app.config.update(WORKER_LEASE_SECONDS=1.0, REPLAY_BATCH_SIZE=10)
    api.create_pipeline()
    r = client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "lake", "transport": {"name": "delta", "config": {"path": "tables/t"}}},
    )
    assert r.status_code == 201, r.get_json()
    api.action("orders", "start")
    changes = [{"insert": {"id": i}} for i in range(400)]  # 40 staged parts
    r = client.post("/v0/pipelines/orders/views/totals/changes", json=changes)
    assert r.status_code == 200
    real = delta.pq.ParquetFile

    def slow_part(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.075)  # 40 parts: 3 s, three leases
        return real(*args, **kwargs)

    monkeypatch.setattr(delta.pq, "ParquetFile", slow_part)
    token = api.reset(connector="lake")
    done = threading.Event()
    rival_claims: list[Any] = []

    def rival() -> None:
        with app.app_context():
            executor = ResetExecutor("rival")
            while not done.is_set():
                claimed = executor.claim()
                if claimed is not None:
                    rival_claims.append(claimed)
                    executor.execute(*claimed)
                db.session.remove()
                time.sleep(0.05)

    thread = threading.Thread(target=rival, daemon=True)
    with app.app_context():
        executor = ResetExecutor("holder")
        claimed = executor.claim()
        assert claimed is not None
        thread.start()
        try:
            executor.execute(*claimed)
        finally:
            done.set()
            thread.join(30)
            db.session.remove()
    body = api.status(token).get_json()
    assert (body["status"], body["attempts"]) == ("complete", 1), body
    assert rival_claims == []
    stats = client.get("/v0/pipelines/orders/views/totals/connectors/lake/stats").get_json()
    assert stats["lease_takeovers"] == 0
    assert (
        DeltaTable(str(Path(app.config["SINK_DIR"]) / "default" / "tables" / "t"))
        .to_pyarrow_table()
        .num_rows
        == 400
    )
