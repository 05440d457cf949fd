"""What delivery and replay read: change-log ranges and snapshot pages, as stored.

Records are kept as canonical JSON text (``app.view_data.store.canonical``),
and sinks receive them in that form, so this path never decodes one: the
transports splice the stored texts into the lines and messages they send
(:func:`app.transports.file.encode_texts`, ``HttpTransport.send_changes``).

The statements are Core, built once; rows come back as plain tuples, a page
of at most :data:`PAGE_ROWS` per statement, and a batch ends at a number of
records or of bytes, whichever comes first: memory holds a few pages (a
snapshot's next page is read ahead, in a thread, while the last is written
out) and one batch, whatever the view's size. ``make bench`` section b (stream delivery
and snapshot replay to a file sink) and section c (a reset to complete,
issue 19's target 5) measure this path.

On SQLite a snapshot page comes back as one row: its records' texts joined by
newlines in the database (a canonical text holds none: JSON escapes it in
strings and has no whitespace between tokens). Fetched row by row, each record
cost a row tuple and three Python objects, its 64-character key among them;
split in Python, it costs one string. On PostgreSQL the snapshot is one
statement, fetched a page at a time from a server-side cursor.
"""

from __future__ import annotations

import contextlib
import operator
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from app.database import snapshot_connection
from app.extensions import db
from app.prepared import PreparedSelect
from app.view_data.models import ViewChange, ViewLog, ViewRecord

# Rows per statement: enough that a statement's own cost is small beside its
# rows', few enough that one page of large records stays small.
PAGE_ROWS = 2000
# A snapshot page's texts come back as one string, which neither engine lets
# grow past 1 GB: after a first page of FIRST_PAGE_ROWS, each page asks for as
# many rows as should hold about PAGE_CHARACTERS at the last page's sizes
# (between 1 and PAGE_ROWS), so a view of large records is read in small pages.
# The first page is small because nothing is known of the sizes yet: 16
# records of a 16 MB request body (MAX_CONTENT_LENGTH) each are 256 MB.
FIRST_PAGE_ROWS = 16
PAGE_CHARACTERS = 4 * 1024 * 1024
# A batch with no byte bound.
UNBOUNDED = sys.maxsize

# A snapshot row's text and weight (PostgreSQL's rows: record, weight).
_text, _weight = operator.itemgetter(0), operator.itemgetter(1)

_changes = ViewChange.__table__.c
_records = ViewRecord.__table__.c
_logs = ViewLog.__table__.c


_LOG_PAGE = PreparedSelect(
    sa.select(_changes.seq, _changes.weight, _changes.record)
    .where(_changes.view_id == sa.bindparam("view_id"), _changes.seq > sa.bindparam("after"))
    .order_by(_changes.seq)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
# A snapshot is read in whatever order each engine's storage makes cheapest:
# nothing needs an order beyond the snapshot's read transaction (a replay that
# stops starts again from the beginning, in a new one).
#
# SQLite: pages, each a range of the view's rowids read through
# ``ix_view_records_view_rowid`` (``view_id``, and the rowid every SQLite
# index ends with), so the table is read in its own order, and each page comes
# back as one row, its texts joined (see the module's docstring). In key order
# (hashes) each row was fetched from a random place of the table, about 4x
# slower for 100,000 records (bench/README.md, "Target 5").
_rowid = sa.literal_column("view_records.rowid", sa.Integer)
_PAGE = (
    sa.select(_rowid.label("at"), _records.record, _records.weight)
    .where(_records.view_id == sa.bindparam("view_id"), _rowid > sa.bindparam("after"))
    .order_by(_rowid)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_SNAPSHOT_PAGE = PreparedSelect(_PAGE)
_page = _PAGE.subquery("page")
# The separator is written into the statement (a literal newline), not bound:
# the aggregate takes it as a constant. ``group_concat`` (an ORDER BY of its
# own from SQLite 3.44 only) gets the page's rows in the subquery's order: it
# runs the subquery as a co-routine that feeds the aggregate row by row.
# The largest weight is 1 when each record is in once; the largest rowid is
# where the next page starts after.
_SNAPSHOT_JOINED = PreparedSelect(
    sa.select(
        sa.func.group_concat(_page.c.record, sa.literal_column("'\n'", sa.Text)),
        sa.func.count(),
        sa.func.max(_page.c.weight),
        sa.func.max(_page.c.at),
    )
)
# PostgreSQL: one statement for the whole snapshot, read through a server-side
# cursor (``DECLARE``, then ``FETCH`` a page at a time) in the snapshot's
# transaction: one scan of the view's rows in the table's order. Keyset pages
# by key cost a scan of the index and a top-N sort each wherever the planner
# misjudges the view's size (a view filled since the last ``ANALYZE``): 17 ms
# a page of 2,000, 0.87 s for 100,000 records, against about 0.1 s.
_SNAPSHOT_ROWS = PreparedSelect(
    sa.select(_records.record, _records.weight).where(_records.view_id == sa.bindparam("view_id"))
)
_SNAPSHOT_CURSOR = "pipeline_manager_snapshot"
# The log's end and the Z-set's size at it, both kept by every batch (one row).
_LOG_HEAD = sa.select(_logs.last_seq, _logs.records).where(_logs.view_id == sa.bindparam("view_id"))


def _fitting(texts: Sequence[str], room: int, budget: int) -> tuple[int, int]:
    """How many of ``texts``, from the first, go into a batch, and their length.

    At most ``room`` of them; if their length reaches ``budget``, they end with
    the text that reaches it (so at least one goes in).
    """
    head = texts[:room]
    size = sum(map(len, head))
    if size < budget:
        return len(head), size
    size = 0
    count = 0
    for count, length in enumerate(map(len, head), 1):  # noqa: B007 (count is the answer)
        size += length
        if size >= budget:
            break
    return count, size


def read_log(
    view_id: int, after_seq: int, max_records: int, max_bytes: int | None = None
) -> list[tuple[int, int, str]]:
    """Return the changes after ``after_seq``, in order, as ``(seq, weight, canonical JSON)``.

    At most ``max_records`` of them; with ``max_bytes``, the batch also ends
    with the change that brings its texts' length to ``max_bytes`` (it holds
    at least one change). Read in the caller's transaction (``db.session``).
    """
    conn = db.session.connection()
    budget = UNBOUNDED if max_bytes is None else max_bytes
    batch: list[tuple[int, int, str]] = []
    size = 0
    params = {"view_id": view_id, "after": after_seq, "limit": PAGE_ROWS}
    while len(batch) < max_records and size < budget:
        params["limit"] = limit = min(PAGE_ROWS, max_records - len(batch))
        rows = _LOG_PAGE.all(conn, params)
        count, length = _fitting([text for _seq, _weight, text in rows], limit, budget - size)
        batch.extend(rows[:count] if count < len(rows) else rows)
        size += length
        if len(rows) < limit:
            break
        params["after"] = rows[-1][0]
    return batch


@dataclass
class Snapshot:
    """A view's contents as of one moment: after change ``seq`` of its log.

    ``records`` counts a record of weight n n times, as the replay sends it.
    """

    connection: sa.Connection
    view_id: int
    seq: int
    records: int
    # How to stop each page reader running (:meth:`_texts`), for :meth:`close`.
    _halts: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def _page(self, after: int, limit: int) -> tuple[list[str], int, int]:
        """SQLite: read up to ``limit`` rows after rowid ``after``: their texts, weight n n times.

        Return them with the page's row count and its largest rowid. The page
        is read joined (:data:`_SNAPSHOT_JOINED`) and split here; one with a
        record of weight above 1, or whose split does not give one text per
        row, is read again row by row, within the same snapshot.
        """
        params = {"view_id": self.view_id, "after": after, "limit": limit}
        ((joined, count, heaviest, last),) = _SNAPSHOT_JOINED.all(self.connection, params)
        if not count:
            return [], 0, after
        texts = joined.split("\n") if heaviest == 1 else []
        if len(texts) != count:
            rows = _SNAPSHOT_PAGE.all(self.connection, params)
            texts = [text for _at, text, weight in rows for _ in range(weight)]
        return texts, count, last

    @contextmanager
    def _reader(self) -> Iterator[Callable[[int], tuple[list[str], int]]]:
        """Yield ``fetch(limit)``: the next rows' texts (weight n n times) and their count."""
        if self.connection.dialect.name != "postgresql":
            after = 0

            def fetch_page(limit: int) -> tuple[list[str], int]:
                nonlocal after
                texts, count, after = self._page(after, limit)
                return texts, count

            yield fetch_page
            return
        params = {"view_id": self.view_id}
        with _SNAPSHOT_ROWS.stream(self.connection, params, _SNAPSHOT_CURSOR) as fetch:

            def fetch_rows(limit: int) -> tuple[list[str], int]:
                rows = fetch(limit)
                if max(map(_weight, rows), default=1) == 1:  # the rule: a copy of each record
                    return list(map(_text, rows)), len(rows)
                return [text for text, weight in rows for _ in range(weight)], len(rows)

            yield fetch_rows

    def _pages(self) -> Iterator[list[str]]:
        """Yield the records' texts page by page, pages sized by their text."""
        limit = min(FIRST_PAGE_ROWS, PAGE_ROWS)
        with self._reader() as fetch:
            while True:
                texts, count = fetch(limit)
                if texts:
                    yield texts
                if count < limit:
                    return
                characters = max(1, sum(map(len, texts)))
                limit = max(1, min(PAGE_ROWS, PAGE_CHARACTERS * count // characters))

    def _texts(self) -> Iterator[list[str]]:
        """:meth:`_pages`, each read while the caller works on the one before.

        A thread of its own reads the next page (the database's work, which
        both drivers do without Python's lock) while the caller writes the last
        one out. It alone uses the snapshot's connection until it ends, which
        it does before this generator does, however the caller stops.
        """
        pages: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def read() -> None:
            try:
                with contextlib.closing(self._pages()) as found:
                    for page in found:
                        pages.put(("page", page))
                        if stop.is_set():
                            return
                pages.put(("end", None))
            except BaseException as exc:  # handed to the caller's thread, raised there
                pages.put(("error", exc))

        def halt() -> None:
            stop.set()
            while reader.is_alive():  # free a put the reader may be blocked in
                with contextlib.suppress(queue.Empty):
                    pages.get(timeout=0.05)
            reader.join()

        reader = threading.Thread(target=read, name="snapshot-reader", daemon=True)
        self._halts.append(halt)
        reader.start()
        try:
            while True:
                kind, item = pages.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            halt()
            self._halts.remove(halt)

    def close(self) -> None:
        """Stop the page readers still running (a caller that left its batches unfinished)."""
        for halt in list(self._halts):
            halt()

    def batches(self, max_records: int, max_bytes: int | None = None) -> Iterator[list[str]]:
        """Yield the snapshot's records as canonical JSON texts, in batches.

        A record of weight n comes n times. A batch holds at most
        ``max_records`` texts and ends, with ``max_bytes``, at the text that
        brings its length to ``max_bytes``. Reads the Z-set a page at a time
        (SQLite: keyset pages by rowid; PostgreSQL: fetches of one server-side
        cursor) within the snapshot's read transaction, in the table's order,
        one page read ahead: memory holds three pages at most and one batch.
        """
        budget = UNBOUNDED if max_bytes is None else max_bytes
        batch: list[str] = []
        size = 0
        for texts in self._texts():
            while texts:
                count, length = _fitting(texts, max_records - len(batch), budget - size)
                batch.extend(texts[:count])
                size += length
                texts = texts[count:]
                if len(batch) >= max_records or size >= budget:
                    yield batch
                    batch, size = [], 0
        if batch:
            yield batch


@contextmanager
def open_snapshot(view_id: int) -> Iterator[Snapshot]:
    """Open a consistent snapshot of a view: its log position and the Z-set at it.

    Both are read in one read transaction of a connection of its own
    (:func:`app.database.snapshot_connection`), kept open while the caller
    replays: changes committed meanwhile are not in it; they follow it in the
    log, after ``Snapshot.seq``.
    """
    with snapshot_connection() as conn:
        params = {"view_id": view_id}
        head = conn.execute(_LOG_HEAD, params).one_or_none()
        seq, records = head if head is not None else (0, 0)
        snapshot = Snapshot(conn, view_id, seq, int(records))
        try:
            yield snapshot
        finally:
            snapshot.close()  # before the connection's transaction ends


def change_texts(rows: Sequence[tuple[int, int, str]]) -> list[str]:
    """The changes of log rows as JSON texts: ``{"insert":record}`` or ``{"delete":record}``."""
    return [
        '{"insert":' + text + "}" if weight > 0 else '{"delete":' + text + "}"
        for _seq, weight, text in rows
    ]


def insert_texts(texts: Sequence[str]) -> list[str]:
    """Snapshot records as JSON texts of their inserts: ``{"insert":record}``."""
    return ['{"insert":' + text + "}" for text in texts]
