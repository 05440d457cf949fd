"""Sinks get stored records spliced in as text, byte for byte what decoding and encoding gave.

The delivery worker and the reset executor never decode a stored record
(``app.delivery.reader``): these tests hold the spliced lines and http bodies
to the bytes that ``json.loads`` then ``json.dumps`` of each record produce.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.delivery import reader
from app.delivery.sinks import PipelineRef, ViewRef
from app.transports.file import encode, encode_texts
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
