"""The stored contents of views: the Z-set and the change log.

Every function here works inside the caller's transaction (``db.session``).
Snapshots and log ranges for delivery are read by :mod:`app.delivery.reader`,
on connections of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from hashlib import sha256
from typing import Any

import sqlalchemy as sa
from flask import current_app

from app.database import (
    db_time,
    executemany,
    insert_adding,
    insert_ignoring_duplicates,
)
from app.extensions import db
from app.strict_json import dumps_canonical, normalize
from app.view_data.models import ViewChange, ViewLog, ViewRecord

# Rows per statement when reading or writing many keys at once (well under
# SQLite's and PostgreSQL's limits on bound parameters).
CHUNK = 500
INSERT = 1
DELETE = -1


class InvalidDelete(Exception):
    """A delete of a record the view does not hold (``index`` is its place in the batch)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"element {index} deletes a record the view does not hold")
        self.index = index


def canonical(record: dict[str, Any]) -> str:
    """Return a record's canonical JSON text: numbers in one form, sorted keys, no spaces.

    Equal JSON values get one text, so ``{"total": 10}`` and ``{"total": 10.0}``
    are one record: an integral double below 1e21 in magnitude is written as
    an integer (``-0.0`` as ``0``), see :func:`app.strict_json.normalize`.
    Raises :class:`app.strict_json.JsonRefused` for what JSON cannot hold
    (NaN, infinities, lone surrogates, nesting too deep).
    """
    return dumps_canonical(normalize(record))


def record_key(text: str) -> str:
    """Return the Z-set key of a record's canonical JSON."""
    return sha256(text.encode("utf-8")).hexdigest()


def log_end(view_id: int) -> int:
    """Return the last sequence number of the view's change log (0 when empty)."""
    end = db.session.execute(
        sa.select(ViewLog.last_seq).where(ViewLog.view_id == view_id)
    ).scalar_one_or_none()
    return end or 0


_LOGS = ViewLog.__table__
_CHANGES = ViewChange.__table__
_RECORDS = ViewRecord.__table__
# Statements of the ingestion hot path, built once (``make bench``, section b).
_APPEND = sa.insert(_CHANGES)
_APPEND_NAMES = ("view_id", "seq", "weight", "record")
_ADD_NAMES = ("view_id", "key", "record", "weight")
_SET_WEIGHT = (
    sa.update(_RECORDS)
    .where(_RECORDS.c.view_id == sa.bindparam("view"), _RECORDS.c.key == sa.bindparam("k"))
    .values(weight=sa.bindparam("w"))
)
# Per engine: INSERT ... ON CONFLICT DO UPDATE adding to the weight, and the bump
# of the log's head (it reads the database clock, which each engine spells its way).
_add_weights: dict[str, sa.Insert] = {}
_bumps: dict[str, sa.Update] = {}


def _bump_statement() -> sa.Update:
    """The engine's statement that reserves a batch's seqs and counts its records.

    It also marks the view due for compaction (``compact_due_at``) once a whole
    batch (``threshold``) is past the log's start, if it is not marked yet: a
    view with no connector needs no log, and compaction only looks at marked
    views (app.view_data.compaction).
    """
    dialect = db.session.get_bind().dialect.name
    statement = _bumps.get(dialect)
    if statement is None:
        last = _LOGS.c.last_seq + sa.bindparam("count")
        mark = sa.and_(
            _LOGS.c.compact_due_at.is_(None),
            last - _LOGS.c.compacted_seq >= sa.bindparam("threshold"),
        )
        statement = _bumps[dialect] = (
            sa.update(_LOGS)
            .where(_LOGS.c.view_id == sa.bindparam("view"))
            .values(
                last_seq=last,
                records=_LOGS.c.records + sa.bindparam("net"),
                compact_due_at=sa.case((mark, db_time()), else_=_LOGS.c.compact_due_at),
            )
            .returning(_LOGS.c.last_seq)
        )
    return statement


def _add_weight_statement() -> sa.Insert:
    """The engine's statement that inserts records or adds to their weight."""
    dialect = db.session.get_bind().dialect.name
    statement = _add_weights.get(dialect)
    if statement is None:
        statement = _add_weights[dialect] = insert_adding(_RECORDS, ["view_id", "key"], "weight")
    return statement


def _allocate(view_id: int, count: int, net: int) -> int:
    """Reserve ``count`` sequence numbers for the view; return the last one.

    ``net`` (inserts minus deletes) is added to the view's record count in the
    same statement: the batch is stored whole or not at all, so the count
    always matches the Z-set.

    The ``UPDATE`` is the transaction's first write to the view, so it takes
    the lock that serializes the view's writers before anything is read.
    """
    threshold = int(current_app.config["COMPACTION_BATCH_SIZE"])
    params = {"view": view_id, "count": count, "net": net, "threshold": threshold}
    bump = _bump_statement()
    last = db.session.execute(bump, params).scalar_one_or_none()
    if last is None:  # the view's first batch
        db.session.execute(
            insert_ignoring_duplicates(_LOGS, {"view_id": view_id, "last_seq": 0}, ["view_id"])
        )
        last = db.session.execute(bump, params).scalar_one()
    return last


def _weights(view_id: int, keys: Sequence[str]) -> dict[str, int]:
    """Return the current weight of each key the view holds."""
    found: dict[str, int] = {}
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        rows = db.session.execute(
            sa.select(ViewRecord.key, ViewRecord.weight).where(
                ViewRecord.view_id == view_id, ViewRecord.key.in_(chunk)
            )
        )
        found.update((key, weight) for key, weight in rows)
    return found


def apply_changes(view_id: int, changes: Sequence[tuple[int, str]]) -> tuple[int, int]:
    """Append changes to the log and fold them into the Z-set; return (first, last) seq.

    ``changes`` are ``(weight, canonical JSON)`` pairs, weight ``1`` (insert) or
    ``-1`` (delete), applied in order. Raises :class:`InvalidDelete` for the
    first delete of a record not present at that point; the caller rolls the
    whole transaction back, so a batch is stored entirely or not at all.
    Nothing is committed here.

    Hot path (``make bench``, section b): one statement appends the batch to
    the log and one adds the batch's net weights to the Z-set
    (``INSERT ... ON CONFLICT DO UPDATE``). Only records the batch deletes are
    read first: a batch that only inserts cannot make a weight negative.
    """
    last = _allocate(view_id, len(changes), sum(weight for weight, _text in changes))
    first = last - len(changes) + 1
    keys = [sha256(text.encode()).hexdigest() for _weight, text in changes]
    executemany(
        _APPEND,
        _APPEND_NAMES,
        [(view_id, seq, weight, text) for seq, (weight, text) in enumerate(changes, start=first)],
    )
    texts = dict(zip(keys, (text for _weight, text in changes), strict=True))
    deleted = {key for (weight, _text), key in zip(changes, keys, strict=True) if weight < 0}
    if len(texts) == len(changes) and not deleted:
        # The common batch: inserts only, each record once.
        added = dict.fromkeys(keys, 1)
    else:
        added = {}
        for (weight, _text), key in zip(changes, keys, strict=True):
            if key not in deleted:
                added[key] = added.get(key, 0) + weight
        if deleted:
            _fold_deletes(view_id, changes, keys, deleted, added)
    if added:
        executemany(
            _add_weight_statement(),
            _ADD_NAMES,
            [(view_id, key, texts[key], weight) for key, weight in added.items()],
        )
    return first, last


def _fold_deletes(
    view_id: int,
    changes: Sequence[tuple[int, str]],
    keys: list[str],
    deleted: set[str],
    added: dict[str, int],
) -> None:
    """Check and store the new weights of the records a batch deletes.

    Replays the batch on those records' stored weights, in order, and raises
    :class:`InvalidDelete` at the first that would go below zero. Records new
    to the view go into ``added``; the others are updated, or removed at 0.
    """
    before = _weights(view_id, list(deleted))
    after = dict(before)
    for index, ((weight, _text), key) in enumerate(zip(changes, keys, strict=True)):
        if key in deleted:
            weight += after.get(key, 0)
            if weight < 0:
                raise InvalidDelete(index)
            after[key] = weight
    changed = []
    gone = []
    for key, weight in after.items():
        if key not in before:
            if weight > 0:
                added[key] = weight
        elif weight == 0:
            gone.append(key)
        elif weight != before[key]:
            changed.append({"view": view_id, "k": key, "w": weight})
    if changed:
        db.session.execute(_SET_WEIGHT, changed)
    for start in range(0, len(gone), CHUNK):
        db.session.execute(
            sa.delete(_RECORDS).where(
                _RECORDS.c.view_id == view_id, _RECORDS.c.key.in_(gone[start : start + CHUNK])
            )
        )


def contents(view_id: int) -> Iterator[tuple[dict[str, Any], int]]:
    """Yield every record of the view with its weight, page by page (for checks and tools)."""
    last_key = ""
    while True:
        rows = db.session.execute(
            sa.select(ViewRecord.key, ViewRecord.record, ViewRecord.weight)
            .where(ViewRecord.view_id == view_id, ViewRecord.key > last_key)
            .order_by(ViewRecord.key)
            .limit(CHUNK)
        ).all()
        if not rows:
            return
        for _key, text, weight in rows:
            yield json.loads(text), weight
        last_key = rows[-1].key
