"""The delivery read path: log ranges and snapshot batches, bounded by records and bytes."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from app import prepared
from app.delivery import reader
from app.extensions import db
from app.pipelines.service import get_pipeline
from app.view_data import service as view_data
from app.view_data import store
from app.view_data.models import ViewRecord


@pytest.fixture
def view(running_pipeline, app):
    """The 'totals' view of the running pipeline, inside an app context."""
    with app.app_context():
        yield view_data.writable_view(get_pipeline("default", "orders"), "totals")
        db.session.remove()


@pytest.fixture(autouse=True)
def small_pages(monkeypatch):
    """Pages of 3 rows, so that every batch below spans several pages."""
    monkeypatch.setattr(reader, "PAGE_ROWS", 3)


def text(i: int) -> str:
    """A stored record of 12 characters for i < 10."""
    return store.canonical({"id": i, "n": "ab"})


def push(view, changes) -> None:
    view_data.push_changes(view, changes)


def wait_for(done, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def is_sqlite() -> bool:
    return db.session.get_bind().dialect.name == "sqlite"


def check_snapshot(flat: list[str], changes) -> None:
    """``flat`` holds each inserted text as often as it was inserted, its copies together.

    Their order is the table's. On SQLite that is the rowid's: here the order
    of each record's first insert (no test below deletes one).
    """
    weights = Counter(t for _op, t in changes)
    assert Counter(flat) == weights
    distinct = list(dict.fromkeys(flat))
    assert flat == [t for t in distinct for _ in range(weights[t])]
    if is_sqlite():
        assert distinct == list(dict.fromkeys(t for _op, t in changes))


def test_a_log_range_is_bounded_by_records_and_by_bytes(view):
    push(view, [(store.INSERT, text(i)) for i in range(10)] + [(store.DELETE, text(0))])
    rows = reader.read_log(view.id, 0, 100)
    assert [seq for seq, _w, _t in rows] == list(range(1, 12))
    assert rows[-1][1:] == (store.DELETE, text(0))
    assert [seq for seq, _w, _t in reader.read_log(view.id, 2, 5)] == [3, 4, 5, 6, 7]
    size = len(text(0))
    # The batch ends with the change that reaches the bound: at least one change.
    assert len(reader.read_log(view.id, 0, 100, max_bytes=4 * size)) == 4
    assert len(reader.read_log(view.id, 0, 100, max_bytes=4 * size - 1)) == 4
    assert len(reader.read_log(view.id, 0, 100, max_bytes=1)) == 1
    assert reader.read_log(view.id, 11, 100) == []
    db.session.rollback()


def test_snapshot_batches_repeat_weights_and_respect_both_bounds(view):
    push(view, [(store.INSERT, text(i)) for i in range(7)])
    push(view, [(store.INSERT, text(3))] * 4)  # weight 5, across batches
    with reader.open_snapshot(view.id) as snapshot:
        assert (snapshot.seq, snapshot.records) == (11, 11)
        by_records = list(snapshot.batches(4))
        by_bytes = list(snapshot.batches(100, max_bytes=3 * len(text(0)) - 1))
        whole = list(snapshot.batches(100))
    assert [len(b) for b in by_records] == [4, 4, 3]
    assert [len(b) for b in by_bytes] == [3, 3, 3, 2]
    assert len(whole) == 1
    pushed = [(store.INSERT, text(i)) for i in range(7)] + [(store.INSERT, text(3))] * 4
    for batches in (by_records, by_bytes, whole):
        check_snapshot([t for batch in batches for t in batch], pushed)


def test_a_snapshot_does_not_see_changes_committed_after_it(view):
    push(view, [(store.INSERT, text(i)) for i in range(5)])
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        push(view, [(store.INSERT, text(i)) for i in range(5, 9)])
        db.session.commit()
        assert (snapshot.seq, snapshot.records) == (5, 5)
        assert sorted(t for b in snapshot.batches(2) for t in b) == sorted(map(text, range(5)))


def test_pages_are_read_ahead_and_the_reader_stops_with_its_caller(view, monkeypatch):
    """The next page is read while the caller works on one; a caller that stops
    half-way (an error, a lost lease) leaves no reader on the snapshot's connection."""
    push(view, [(store.INSERT, text(i)) for i in range(30)])
    db.session.commit()
    pages = reader.Snapshot._pages
    read: list[int] = []

    def counted(self):
        for page in pages(self):
            read.append(len(page))
            yield page

    monkeypatch.setattr(reader.Snapshot, "_pages", counted)
    with reader.open_snapshot(view.id) as snapshot:
        batches = snapshot.batches(2)
        assert len(next(batches)) == 2
        # Pages of 3: the first was split into batches, the second read ahead meanwhile.
        wait_for(lambda: len(read) >= 2)
        readers = [t for t in threading.enumerate() if t.name == "snapshot-reader"]
        assert len(readers) == 1
        # The caller stops here, its generator left unfinished: the snapshot's end
        # stops the reader before it rolls the connection back.
    readers[0].join(timeout=5)
    assert not readers[0].is_alive()
    assert len(read) < 10  # it stopped reading
    with reader.open_snapshot(view.id) as snapshot:
        assert sum(len(b) for b in snapshot.batches(4)) == 30
    assert read[-10:] == [3] * 10
    assert not [t for t in threading.enumerate() if t.name == "snapshot-reader"]


def test_a_page_reader_error_is_raised_to_the_caller(view, monkeypatch):
    push(view, [(store.INSERT, text(i)) for i in range(9)])
    db.session.commit()
    pages = reader.Snapshot._pages

    def failing(self):
        found = pages(self)
        yield next(found)
        raise sa.exc.OperationalError("FETCH", {}, Exception("connection lost"))

    monkeypatch.setattr(reader.Snapshot, "_pages", failing)
    with reader.open_snapshot(view.id) as snapshot:
        batches = snapshot.batches(100)
        with pytest.raises(sa.exc.OperationalError, match="connection lost"):
            list(batches)
    assert not [t for t in threading.enumerate() if t.name == "snapshot-reader"]


def test_an_empty_view_has_an_empty_snapshot(view):
    with reader.open_snapshot(view.id) as snapshot:
        assert (snapshot.seq, snapshot.records) == (0, 0)
        assert list(snapshot.batches(10)) == []


@pytest.fixture
def statements():
    """The snapshot pages' statements as they run (they bypass the engine's events)."""
    seen: list[str] = []
    listener = lambda statement, _params: seen.append(statement)  # noqa: E731
    prepared.statement_listeners.append(listener)
    yield seen
    prepared.statement_listeners.remove(listener)


def test_a_snapshot_is_read_a_page_a_statement_on_sqlite_and_in_one_on_postgresql(view, statements):
    pushed = [(store.INSERT, text(i)) for i in range(7)]
    push(view, pushed)
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        pages = [len(page) for page in snapshot._texts()]
        flat = [t for batch in snapshot.batches(100) for t in batch]
    check_snapshot(flat, pushed)
    # Pages of 3 rows: 3, 3 and 1.
    assert pages == [3, 3, 1]
    if is_sqlite():
        # A statement each (the log head is not one of them), twice: no page
        # was read row by row.
        assert len(statements) == 6
        assert all(s == statements[0] for s in statements)
    else:
        # One statement a snapshot, its pages fetched from one cursor.
        assert len(statements) == 2
        assert statements[0] == statements[1]


def test_sqlite_pages_a_snapshot_in_rowid_order_through_its_index(view):
    """On SQLite a page is a range of the view's rowids, read through an index.

    In key order (the primary key) each row was fetched from a random place of
    the table; the rowid order reads the table in its own order.
    """
    if not is_sqlite():
        pytest.skip("SQLite pages by rowid; PostgreSQL reads through one cursor")
    statement = reader._SNAPSHOT_JOINED.statement
    sql = str(statement.compile(db.engine))
    # The page's parameters in the statement's order: view, after, limit, offset.
    plan = db.session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql, (view.id, 0, 3, 0))
    details = " ".join(row[-1] for row in plan)
    assert "USING INDEX ix_view_records_view_rowid (view_id=? AND rowid>?)" in details, details
    assert "TEMP B-TREE" not in details, details


def test_a_snapshot_whose_connection_dies_raises_the_database_error_and_drops_it(view):
    """PostgreSQL: the cursor's driver errors come as SQLAlchemy's, the dead connection invalidated.

    As every other statement's: the executor and the worker tell a database
    gone from a bug by them.
    """
    if is_sqlite():
        pytest.skip("PostgreSQL reads a snapshot through a server-side cursor; SQLite pages")
    push(view, [(store.INSERT, text(i)) for i in range(10)])
    db.session.commit()
    with (
        pytest.raises(sa.exc.OperationalError) as caught,
        reader.open_snapshot(view.id) as snapshot,
    ):
        # Asked before the pages are: from then on their reader alone uses the connection.
        pid = snapshot.connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        pages = snapshot._texts()
        assert len(next(pages)) == 3
        with db.engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
        list(pages)
    assert caught.value.connection_invalidated
    with reader.open_snapshot(view.id) as snapshot:  # the pool hands out a live one
        assert sum(len(b) for b in snapshot.batches(100)) == 10


def test_a_page_that_does_not_split_into_its_rows_is_read_row_by_row(view, statements):
    # Not canonical (canonical text holds no newline), written straight into the
    # Z-set: the joined page does not split into one text per row.
    odd = '{"id":\n1}'
    db.session.execute(
        sa.insert(ViewRecord).values(view_id=view.id, key="0" * 64, record=odd, weight=1)
    )
    push(view, [(store.INSERT, text(i)) for i in range(4)])
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        flat = [t for batch in snapshot.batches(100) for t in batch]
    assert Counter(flat) == Counter([odd, *map(text, range(4))])
    # SQLite: the first page (the odd record and two more) was read again row
    # by row. PostgreSQL joins nothing: one statement.
    assert len(statements) == (3 if is_sqlite() else 1)


def test_snapshot_pages_shrink_to_hold_about_page_characters(view, monkeypatch):
    # Texts of 12 characters, pages of at most 3 rows and about 24 characters.
    monkeypatch.setattr(reader, "PAGE_CHARACTERS", 2 * len(text(0)))
    push(view, [(store.INSERT, text(i)) for i in range(7)])
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        pages = [len(page) for page in snapshot._texts()]
        flat = [t for batch in snapshot.batches(100) for t in batch]
    assert pages == [3, 2, 2]
    assert sorted(flat) == sorted(map(text, range(7)))


def test_weights_above_one_and_unicode_are_replayed_exactly(view, statements):
    # Records of weight 2 and 3: the pages holding one are read again row by
    # row, the others are not.
    odd = ["é", "😀", "\u2028", "a\nb", '"\\']
    texts = [store.canonical({"id": i, "s": s}) for i, s in enumerate(odd)]
    changes = [(store.INSERT, t) for t in texts] + [(store.INSERT, texts[1])] * 2
    changes += [(store.INSERT, texts[3])] + [(store.INSERT, text(i)) for i in range(4)]
    push(view, changes)
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        assert snapshot.records == len(changes)
        flat = [t for batch in snapshot.batches(4) for t in batch]
    check_snapshot(flat, changes)
    rows = list(dict.fromkeys(flat))
    pages = [rows[i : i + 3] for i in range(0, len(rows), 3)]
    heavy = sum(texts[1] in page or texts[3] in page for page in pages)
    # SQLite: nine rows, three full pages and an empty one, and the heavy
    # pages again. PostgreSQL: one statement.
    assert (len(pages), heavy) in {(3, 1), (3, 2)}
    assert len(statements) == (4 + heavy if is_sqlite() else 1)


@pytest.mark.parametrize("page", [36, 48])
def test_records_about_the_page_size_are_replayed_exactly(view, monkeypatch, page):
    # Texts of 12 characters, and texts one short of PAGE_CHARACTERS, of it,
    # one over it and five times it (twice): pages shrink to one row after a
    # page of long texts and grow again after short ones.
    monkeypatch.setattr(reader, "PAGE_ROWS", 4)
    monkeypatch.setattr(reader, "FIRST_PAGE_ROWS", 2)
    monkeypatch.setattr(reader, "PAGE_CHARACTERS", page)
    shape = len(store.canonical({"id": 0, "n": ""}))
    big = [
        store.canonical({"id": i, "n": "x" * (size - shape)})
        for i, size in enumerate([page - 1, page, page + 1, 5 * page])
    ]
    assert [len(t) for t in big] == [page - 1, page, page + 1, 5 * page]
    changes = [(store.INSERT, t) for t in big] + [(store.INSERT, text(i)) for i in range(12)]
    changes += [(store.INSERT, big[3])]
    push(view, changes)
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        pages = list(snapshot._texts())
        by_bytes = list(snapshot.batches(100, max_bytes=page))
        whole = list(snapshot.batches(100))
    want = [t for p in pages for t in p]
    check_snapshot(want, changes)
    assert [t for b in by_bytes for t in b] == want
    assert all(sum(map(len, b[:-1])) < page for b in by_bytes)
    assert whole == [want]
    rows = [len(set(p)) for p in pages]
    assert min(rows) == 1
    assert max(rows) > 1
    assert all(n <= 4 for n in rows)


def test_a_record_near_the_limits_of_a_page_string(view, monkeypatch):
    # One record of 1 MB among small ones, the default page sizes: one page.
    monkeypatch.setattr(reader, "PAGE_ROWS", 2000)
    large = store.canonical({"id": -1, "blob": "é" * (1024 * 1024)})
    changes = [(store.INSERT, large)] + [(store.INSERT, text(i)) for i in range(20)]
    push(view, changes)
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        flat = [t for batch in snapshot.batches(10_000) for t in batch]
    check_snapshot(flat, changes)
