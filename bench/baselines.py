"""Raw baselines for section b: the same rows and lines, without the service.

- Ingestion: plain ``sqlite3`` ``executemany`` of the rows a batch stores (the
  change log's ``(view, seq, weight, record)`` and the Z-set's ``(view, key,
  record, weight)``), into tables shaped like the app's, one transaction per
  batch, with the app's SQLite settings (WAL, ``synchronous=NORMAL``). Texts
  and keys are computed beforehand: this is what the database alone costs.
- Delivery and replay: the same JSON lines written to a file, one ``write``
  per batch of the same size, from the stored texts (no JSON parsing); for a
  reset over gunicorn (section c), the same with an ``fsync`` every 1,000 lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE changes (
    view_id INTEGER NOT NULL, seq BIGINT NOT NULL, weight SMALLINT NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (view_id, seq));
CREATE TABLE records (
    view_id INTEGER NOT NULL, key VARCHAR(64) NOT NULL, record TEXT NOT NULL,
    weight BIGINT NOT NULL, PRIMARY KEY (view_id, key));
"""


def canonical_texts(bodies: list[bytes]) -> list[str]:
    """The canonical JSON text of every record the bodies insert, as the view stores it."""
    from app.view_data import store

    return [store.canonical(change["insert"]) for body in bodies for change in json.loads(body)]


def keyed(texts: list[str]) -> list[tuple[str, str]]:
    """Pair each canonical text with its Z-set key (the SHA-256 of the text)."""
    return [(text, hashlib.sha256(text.encode()).hexdigest()) for text in texts]


# The connection settings copied from the app's own SQLite connections.
PRAGMAS = ("journal_mode", "synchronous", "wal_autocheckpoint", "cache_size", "mmap_size")
DEFAULT_PRAGMAS = {"journal_mode": "wal", "synchronous": "1"}


def sqlite_executemany(
    path: Path, rows: list[tuple[str, str]], batch: int, pragmas: dict[str, str] | None = None
) -> float:
    """Insert the rows of every batch into a fresh SQLite file; return the seconds taken.

    ``pragmas`` are the app's connection settings (:data:`PRAGMAS`), so that the
    baseline runs with the same journal, sync and checkpoint settings.
    """
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for name, value in (pragmas or DEFAULT_PRAGMAS).items():
            conn.execute(f"PRAGMA {name}={value}")
        conn.executescript(SCHEMA)
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO changes VALUES (1, ?, 1, ?)",
                [(start + i + 1, text) for i, (text, _key) in enumerate(chunk)],
            )
            conn.executemany(
                "INSERT INTO records VALUES (1, ?, ?, 1)", [(key, text) for text, key in chunk]
            )
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def service_pragmas(app: Any) -> dict[str, str] | None:
    """The SQLite settings of an app's connections (None on PostgreSQL: the defaults apply)."""
    from app.extensions import db

    with app.app_context():
        engine = db.engine
    if engine.dialect.name != "sqlite":
        return None
    conn = engine.raw_connection()
    try:
        return app_pragmas(conn.driver_connection)
    finally:
        conn.close()


def app_pragmas(conn: object) -> dict[str, str]:
    """Read :data:`PRAGMAS` off one of the app's SQLite DB-API connections."""
    cursor = conn.cursor()  # type: ignore[attr-defined]
    try:
        return {name: str(cursor.execute(f"PRAGMA {name}").fetchone()[0]) for name in PRAGMAS}
    finally:
        cursor.close()


def file_writes(path: Path, texts: list[str], batch: int) -> float:
    """Write ``{"insert":<text>}`` lines to a file, one write per batch; return the seconds."""
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as sink:
        for start in range(0, len(texts), batch):
            lines = "".join('{"insert":' + text + "}\n" for text in texts[start : start + batch])
            sink.write(lines.encode())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def file_fsync_writes(path: Path, texts: list[str], every: int = 1000) -> float:
    """Write ``{"insert":<text>}`` lines to a file, an ``fsync`` every ``every`` lines; seconds."""
    started = time.perf_counter()
    with open(path, "wb", buffering=0) as sink:
        for start in range(0, len(texts), every):
            lines = "".join('{"insert":' + text + "}\n" for text in texts[start : start + every])
            sink.write(lines.encode())
            os.fsync(sink.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds
