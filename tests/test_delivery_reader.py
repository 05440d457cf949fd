"""The delivery read path: log ranges and snapshot batches, bounded by records and bytes."""

from __future__ import annotations

from collections import Counter

import pytest

from app.delivery import reader
from app.extensions import db
from app.pipelines.service import get_pipeline
from app.view_data import service as view_data
from app.view_data import store


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
    want = Counter({text(i): 1 for i in range(7)}) + Counter({text(3): 4})
    for batches in (by_records, by_bytes, whole):
        flat = [t for batch in batches for t in batch]
        assert Counter(flat) == want
        # In key order: a record's copies come together.
        keys = [store.record_key(t) for t in dict.fromkeys(flat)]
        assert keys == sorted(keys)


def test_a_snapshot_does_not_see_changes_committed_after_it(view):
    push(view, [(store.INSERT, text(i)) for i in range(5)])
    db.session.commit()
    with reader.open_snapshot(view.id) as snapshot:
        push(view, [(store.INSERT, text(i)) for i in range(5, 9)])
        db.session.commit()
        assert (snapshot.seq, snapshot.records) == (5, 5)
        assert sorted(t for b in snapshot.batches(2) for t in b) == sorted(map(text, range(5)))


def test_an_empty_view_has_an_empty_snapshot(view):
    with reader.open_snapshot(view.id) as snapshot:
        assert (snapshot.seq, snapshot.records) == (0, 0)
        assert list(snapshot.batches(10)) == []
