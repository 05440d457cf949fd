"""Sinks get stored records spliced in as text, byte for byte what decoding and encoding gave.

The delivery worker and the reset executor never decode a stored record
(``app.delivery.reader``): these tests hold the spliced lines and http bodies
to the bytes that ``json.loads`` then ``json.dumps`` of each record produce.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.delivery import reader
from app.delivery.sinks import PipelineRef, ViewRef
from app.delivery.worker import DeliveryWorker
from app.extensions import db
from app.transports.file import encode, encode_inserts, encode_texts
from app.transports.http import HttpTransport
from app.view_data import store

# Characters where the file's escaping (ensure_ascii) and the stored form differ
# or are easy to get wrong: quotes, backslashes, controls, DEL, non-ASCII, astral.
TRICKY = '"\\/\x00\x01\x08\t\n\x0c\r\x1f ~\x7f\x80\xa0\xe9\u2028\u0085\uffff\U0001f600\U0010ffff'
text = st.text(alphabet=st.sampled_from(TRICKY) | st.characters(blacklist_categories=("Cs",)))
scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
records = st.lists(st.dictionaries(text, value, max_size=5), max_size=8)


def as_change(weight: int, text: str) -> dict[str, Any]:
    """The change as the records themselves encode it (the reference): decoded, not spliced."""
    return {"insert" if weight > 0 else "delete": json.loads(text)}


def stored(records: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """The records as log rows ``(seq, weight, canonical JSON)``, alternating insert and delete."""
    return [(n + 1, 1 if n % 2 == 0 else -1, store.canonical(r)) for n, r in enumerate(records)]


@settings(max_examples=300, deadline=None)
@given(records)
def test_file_lines_spliced_from_stored_text_equal_the_encoded_records(records):
    rows = stored(records)
    decoded = [as_change(weight, text) for _seq, weight, text in rows]
    assert encode_texts(reader.change_texts(rows)) == encode(decoded)
    texts = [text for _seq, _weight, text in rows]
    inserts = [{"insert": json.loads(t)} for t in texts]
    assert encode_texts(reader.insert_texts(texts)) == encode(inserts)
    # A reset's batch, joined whole: the same bytes.
    assert encode_inserts(texts) == encode(inserts)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(text, value, max_size=5))
def test_a_canonical_text_holds_no_newline(record):
    # A snapshot page comes back as its texts joined by newlines, split again
    # in Python (app.delivery.reader): a record holding one would split apart.
    assert "\n" not in store.canonical(record)


class Recorder(HttpTransport):
    """Keeps the body of each message instead of sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def _post(self, settings, body, headers, what, keep_alive, starts_after=None) -> int:
        self.bodies.append(body)
        return len(body)


TARGET = SimpleNamespace(
    uid="9b1d0000-0000-4000-8000-000000000001",
    name="hook",
    config={"url": "http://127.0.0.1:9/in"},
    view=ViewRef("totals", PipelineRef("orders", "default")),
)


def expected_body(kind: str, changes: list[dict[str, Any]], **fields: Any) -> bytes:
    """The message as the transport encoded it from decoded records."""
    payload = {
        "type": kind,
        "connector_id": TARGET.uid,
        "connector": TARGET.name,
        "pipeline": "orders",
        "view": "totals",
        **fields,
        "records": changes,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(records)
def test_http_bodies_spliced_from_stored_text_equal_the_encoded_records(records):
    rows = stored(records)
    decoded = [as_change(weight, text) for _seq, weight, text in rows]
    driver = Recorder()
    driver.send_changes(
        TARGET, reader.change_texts(rows), kind="batch", epoch=3, first_seq=1, last_seq=len(rows)
    )
    driver.send(TARGET, decoded, kind="batch", epoch=3, first_seq=1, last_seq=len(rows))
    batch_id = f"{TARGET.uid}:1-{len(rows)}"
    want = expected_body(
        "batch", decoded, epoch=3, first_seq=1, last_seq=len(rows), batch_id=batch_id
    )
    assert driver.bodies == [want, want]
    json.loads(driver.bodies[0])  # and it is JSON

    texts = [text for _seq, _weight, text in rows]
    driver.send_changes(
        TARGET,
        reader.insert_texts(texts),
        kind="snapshot",
        epoch=4,
        first_seq=1,
        last_seq=len(texts),
        snapshot_seq=9,
    )
    batch_id = f"{TARGET.uid}:snapshot-4:1-{len(texts)}"
    assert driver.bodies[-1] == expected_body(
        "snapshot",
        [{"insert": json.loads(t)} for t in texts],
        epoch=4,
        snapshot_seq=9,
        first_seq=1,
        last_seq=len(texts),
        batch_id=batch_id,
    )


CHANGES = "/v0/pipelines/orders/views/totals/changes"
# Records the replay could get wrong: non-ASCII, astral, escapes, a newline and
# a line separator inside strings, one of 100,000 characters.
ODD = [
    {"id": 1, "s": "é\u2028\u0085"},
    {"id": 2, "s": "😀\U0010ffff"},
    {"id": 3, "s": 'a\nb"c\\d\x00\x7f'},
    {"id": 4, "n": [1.5, -0.0, 1e300, 10**30], "o": {"z": None, "a": True}},
    {"id": 5, "s": "x" * 100_000},
]


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Replay batches of 7 records, so that a snapshot spans several."""
    app_config["REPLAY_BATCH_SIZE"] = 7
    return app_config


def sink_bytes(tmp_path: Path) -> bytes:
    return (tmp_path / "sinks" / "default" / "out" / "totals.jsonl").read_bytes()


def check_replayed(app, replayed: bytes, streamed: bytes) -> None:
    """The replayed file holds the streamed (insert) lines byte for byte, each record's together.

    In the table's order: on SQLite the rowid's, here the order of each
    record's first insert (nothing below is deleted).
    """
    lines = streamed.splitlines(keepends=True)
    copies = Counter(lines)
    got = replayed.splitlines(keepends=True)
    assert Counter(got) == copies
    distinct = list(dict.fromkeys(got))
    assert got == [line for line in distinct for _ in range(copies[line])]
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        assert distinct == list(copies)


@pytest.mark.parametrize(
    "pages",
    [
        {},
        # Pages of a few rows and about two records' characters: they shrink
        # to one row at the long record and grow back.
        {"PAGE_ROWS": 3, "FIRST_PAGE_ROWS": 1, "PAGE_CHARACTERS": 60},
    ],
    ids=["default pages", "small pages"],
)
def test_encoding_equality_of_a_replayed_file_and_the_streamed_lines(
    running_pipeline, app, tmp_path, run_resets, monkeypatch, pages
):
    # The stream writes each change's line (app.transports.file.encode_texts);
    # the replay joins a snapshot's pages and batches whole (encode_inserts).
    # Inserts only, some of them twice or three times (weights 2 and 3): the
    # replayed file is the streamed one's lines, byte for byte.
    for name, value in pages.items():
        monkeypatch.setattr(reader, name, value)
    plain = [{"id": 100 + i, "name": f"r{i}"} for i in range(40)]
    pushed = ODD + plain + ODD[:2] + [ODD[1], plain[7]]
    client = running_pipeline.client
    assert client.post(CHANGES, json=[{"insert": r} for r in pushed]).status_code == 200
    with app.app_context():
        DeliveryWorker("worker-1").run_pending()
        db.session.remove()
    streamed = sink_bytes(tmp_path)
    # As stored: numbers in their canonical form (-0.0 is 0).
    assert streamed == encode([{"insert": json.loads(store.canonical(r))} for r in pushed])
    running_pipeline.reset()
    assert run_resets() == 1
    check_replayed(app, sink_bytes(tmp_path), streamed)


def test_encoding_equality_of_an_empty_view_replayed(running_pipeline, app, tmp_path, run_resets):
    running_pipeline.reset()
    assert run_resets() == 1
    assert sink_bytes(tmp_path) == b""
