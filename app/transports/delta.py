"""The ``delta`` transport: a Delta Lake table under the tenant's sink folder.

A table sink (see ``app.transports.tables``): each batch of changes lands in
one Delta commit that also records the connector's position, as the Delta
*application transaction* of the connector's UUID (``txn`` action: app id
``target.uid``, version = the last change-log seq the table holds).

Settings: ``{"path": "tables/orders", "mode": "changes"}``, and optionally
``columns`` and ``key``. ``path`` names the table's folder inside the tenant's
sink folder (a relative path is taken from it, as for the ``file`` transport;
it may not exist yet, but must not be a file). Two connectors cannot write one
table: the sink key is the resolved folder. ``columns`` declares the table's
columns, name -> Delta primitive type; each record's fields land in them,
converted as :mod:`app.transports.delta_columns` says (a field that is not a
column, or a value its column cannot take, refuses the batch: a poison
``TransportError``, the connector fails until a reset).

Mode ``changes`` (the default): an append-only table of changes, with the
columns ``seq`` (long, not null: the change-log seq of the change; a snapshot
row carries the snapshot's seq), ``op`` (string, not null: ``insert`` or
``delete``) and, without declared columns, ``record`` (string, not null: the
record's canonical JSON text exactly as stored), or else the declared columns.
Each change-log row is one table row: weight > 0 an ``insert``, weight < 0 a
``delete``. Deletes are rows, never Delta deletes: the view is the fold of the
table, +1 per ``insert`` row and -1 per ``delete`` row of a record. The table
is created on its first write.

Mode ``rows`` (``columns`` and ``key`` required): the table equals the view,
one row per key. Each batch is one ``MERGE`` commit of its net changes on the
key, the rule of the postgres transport's keyed mode: a record's copies are
netted over the batch; an insert replaces the row with its key (or adds one),
a delete removes the row with its key only if every column still equals the
record, so an update split over two batches, in either order, lands right. A
MERGE that changes no row makes no commit in ``deltalake``: the batch's
position is then committed alone (an empty ``WRITE``), still one commit per batch.

Streaming (:meth:`DeltaTransport.apply`): the table is loaded, the position
read from it, and the batch appended (``write_deltalake`` with the loaded
table) only when that position is the batch's start; the commit is checked
against the version read, so of two writers of one batch that both read
position ``first - 1``, the second fails (``CommitFailedError``), reloads,
finds the batch held and skips it. A missing table is first created empty
(its own ``CREATE TABLE`` commit, with no rows and no position), then written
like any other: ``deltalake`` checks a commit that creates a table against no
version, so two writers that each created the table with their batch would
both land, whereas racing creators of an empty table do no harm (at worst a
second, empty ``CREATE TABLE`` commit).

Reset (:class:`DeltaReset`): each snapshot batch is written as a parquet file
(the column ``record``, or the declared columns, converted then) in a staging
folder beside the table,
``.<table folder name>.reset-<epoch>/``, so memory holds one batch at a time.
Every row of the table carries the snapshot's seq, which is only given to
:meth:`DeltaReset.switch_in`, so staged files cannot become table files as
they are: ``switch_in`` streams them, one staged batch at a time, into the
table's data files (``seq``, ``op`` and the record's columns, or the declared
columns alone in mode ``rows``, zstd; written into the
table's folder, where no reader looks until a commit names them), then calls
``fence()``, then makes one ``WRITE`` commit in ``Overwrite`` mode
(``DeltaTable.create_write_transaction``: metadata only, the data files are
written) that removes every file of the table, adds the new ones and records
the snapshot's seq. Readers see the old version or the new one. A missing
table is first created empty, as for streaming.

``fence()`` runs in the caller's thread, between the data files and the
commit: it needs the caller's database session, so it cannot run inside a
streamed ``write_deltalake``, whose input is pulled from a thread of
``deltalake``'s own. If it raises, nothing is committed, the new data files
are deleted and its exception goes on unchanged. ``begin_reset`` deletes the
staging folders of lower epochs (their writers lost their leases), never
those of higher ones.

Files no commit names (left by a process that died between writing data
files and committing) and files of replaced versions stay on disk until the
table is vacuumed, as Delta's time travel expects.

Errors become ``TransportError`` with a one-line message that names the table
by the path the connector gave and no server path outside the tenant's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import (
    CommitProperties,
    DeltaTable,
    Schema,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction
from flask import current_app, has_app_context

from app.errors import InvalidRequest
from app.transports.base import KeepAlive, TransportError
from app.transports.delta_columns import Columns, Refused, is_type
from app.transports.delta_spec import (
    CHANGE_COLUMNS,
    COLUMN,
    MAX_COLUMNS,
    MAX_KEY_COLUMNS,
    MODES,
    SETTINGS,
    TYPES,
    config_schema,
)
from app.transports.file import fsync_dir, resolve_sink_path, sink_dir
from app.transports.tables import Applied, LogRow, SinkMoved

# The change table's first columns (mode "changes"), then the record's.
CHANGE_FIELDS = (
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("op", pa.string(), nullable=False),
)
RECORD_FIELD = pa.field("record", pa.string(), nullable=False)
# The change table's columns when no columns are declared.
SCHEMA = pa.schema([*CHANGE_FIELDS, RECORD_FIELD])
# A staged snapshot batch, no columns declared: the records only (their seq is known
# at the switch).
STAGED_SCHEMA = pa.schema([RECORD_FIELD])
# Mode rows: the source column of a MERGE that marks a delete (no declared column
# may be named so: names starting with _pm_ are the service's).
DELETE_FLAG = "_pm_delete"
RESERVED_PREFIX = "_pm_"

COMPRESSION = "zstd"
WRITER_PROPERTIES = WriterProperties(compression="ZSTD")
# A reset's data file is closed once it holds this many bytes of record text.
DATA_FILE_TEXT_BYTES = 256 * 2**20
# Writers of one batch that keep losing the commit race give up after this.
COMMIT_ATTEMPTS = 5

_FAILURES = (DeltaError, OSError, pa.ArrowException)


def _refuse(field: str, message: str, detail: str) -> InvalidRequest:
    return InvalidRequest(message, details={f"transport.config.{field}": [detail]})


def _txn(uid: str, version: int) -> CommitProperties:
    """A commit's properties recording ``version`` as the connector's position."""
    return CommitProperties(app_transactions=[Transaction(uid, version)])


def _text_bytes(texts: pa.Array | pa.ChunkedArray) -> int:
    """The UTF-8 length of all the texts of a string array."""
    if len(texts) == 0:
        return 0
    return int(pc.sum(pc.binary_length(texts)).as_py())


def _constant(value: Any, type_: pa.DataType, length: int) -> pa.Array:
    return pa.nulls(length, type_).fill_null(pa.scalar(value, type_))


class _Layout:
    """What a connector's table looks like: its mode, declared columns and key.

    No declared columns: the change table of record texts (``seq``, ``op``,
    ``record``). Declared columns: ``seq``, ``op`` and the columns (mode
    ``changes``), or the columns alone (mode ``rows``, one row per key).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.mode = config.get("mode", "changes")
        declared = config.get("columns")
        self.columns = Columns(declared, config.get("key") or ()) if declared else None
        if self.columns is None:
            self.schema = SCHEMA
            self.staged = STAGED_SCHEMA
        else:
            self.staged = self.columns.schema
            before = CHANGE_FIELDS if self.mode == "changes" else ()
            self.schema = pa.schema([*before, *self.columns.schema])
        self.delta_schema = Schema.from_arrow(self.schema)

    @property
    def rows(self) -> bool:
        return self.mode == "rows"

    def described(self) -> str:
        return ", ".join(
            f"{f.name} ({getattr(f.type, 'type', f.type)})" for f in self.delta_schema.fields
        )

    def stage(self, records: Sequence[str]) -> pa.Table:
        """Snapshot records as a staged batch (raises ``Refused``)."""
        if self.columns is None:
            return pa.Table.from_arrays([pa.array(records, pa.string())], schema=STAGED_SCHEMA)
        return self.columns.table(records)

    def data(self, staged: pa.Table, snapshot_seq: int) -> pa.Table:
        """A staged batch as table rows of the snapshot at ``snapshot_seq``."""
        if self.rows:
            return staged
        length = staged.num_rows
        return pa.Table.from_arrays(
            [
                _constant(snapshot_seq, pa.int64(), length),
                _constant("insert", pa.string(), length),
                *staged.columns,
            ],
            schema=self.schema,
        )

    def changes(self, rows: Sequence[LogRow]) -> pa.Table:
        """Log rows as change-table rows: one per log row, an insert or a delete."""
        kept = [row for row in rows if row[1] != 0]
        head = [
            pa.array([row[0] for row in kept], pa.int64()),
            pa.array(["insert" if row[1] > 0 else "delete" for row in kept], pa.string()),
        ]
        if self.columns is None:
            tail = [pa.array([row[2] for row in kept], pa.string())]
        else:
            tail = self.columns.table([row[2] for row in kept]).columns
        return pa.Table.from_arrays([*head, *tail], schema=self.schema)

    def merge_source(self, rows: Sequence[LogRow]) -> pa.Table:
        """A batch's net changes per key (mode rows), as the source of one MERGE.

        The fold of the postgres transport's keyed mode: each record's copies
        are netted over the batch; a key with a net insert gets that record
        (it replaces the row, whatever a delete of the batch said); a key with
        net deletes only gets a delete, which removes the row only if it still
        equals the record. Two records inserted with one key, or two deleted
        with none inserted, mean the view is not keyed so: refused.
        """
        assert self.columns is not None
        weights: Counter[str] = Counter()
        for _seq, weight, text in rows:
            if weight:
                weights[text] += 1 if weight > 0 else -1
        upserts: dict[tuple[Any, ...], dict[str, Any]] = {}
        deletes: dict[tuple[Any, ...], dict[str, Any]] = {}
        for text, net in weights.items():
            if net == 0:
                continue
            row = self.columns.parse(text)
            key = self.columns.key_of(row)
            chosen = upserts if net > 0 else deletes
            if net > 1 or key in chosen:
                shown = json.dumps(list(key), default=str)[:80]
                raise Refused(
                    f"the batch {'inserts' if net > 0 else 'deletes'} two records with the "
                    f"key {shown}: the view is not keyed by {', '.join(self.columns.key)}"
                )
            chosen[key] = row
        kept = list(upserts.values()) + [r for k, r in deletes.items() if k not in upserts]
        flags = [False] * len(upserts) + [True] * (len(kept) - len(upserts))
        return pa.Table.from_arrays(
            [*self.columns.arrays(kept), pa.array(flags, pa.bool_())],
            names=[*self.columns.names, DELETE_FLAG],
        )

    def merge_predicates(self) -> tuple[str, str]:
        """The MERGE's match predicate (the key) and its delete predicate (the row unchanged)."""
        assert self.columns is not None
        key = " AND ".join(f"t.`{name}` = s.`{name}`" for name in self.columns.key)
        same = "".join(
            f" AND (t.`{name}` IS NOT DISTINCT FROM s.`{name}`)"
            for name in self.columns.names
            if name not in self.columns.key
        )
        return key, f"s.`{DELETE_FLAG}`{same}"


_ABSOLUTE = re.compile(r"(?<![\w.])(?:file://)?/[^\s\"'`]+")


class _Table:
    """A connector's table: where it is, how messages name it, how errors are told."""

    def __init__(self, path: Path, shown: str, tenant: str, layout: _Layout | None = None) -> None:
        self.path = path
        self.shown = shown
        self.tenant_dir = sink_dir(tenant)
        self.layout = layout or _Layout({})

    def refused(self, action: str, exc: Refused) -> TransportError:
        """A batch the table's columns cannot hold: sending it again cannot succeed."""
        return TransportError(f"Cannot {action} Delta table '{self.shown}': {exc}", poison=True)

    def error(self, action: str, exc: BaseException) -> TransportError:
        """A ``TransportError`` for ``exc``: one line, no server path outside the tenant's."""
        if isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        else:
            lines = str(exc).strip().splitlines()
            text = lines[0] if lines else type(exc).__name__
        for prefix in (f"file://{self.path}", str(self.path)):
            text = text.replace(prefix, self.shown)
        for prefix in (f"file://{self.tenant_dir}/", f"{self.tenant_dir}/"):
            text = text.replace(prefix, "")
        text = _ABSOLUTE.sub("<path>", text)[:300]
        return TransportError(f"Cannot {action} Delta table '{self.shown}': {text}")

    def load(self, action: str) -> DeltaTable | None:
        """The table at its latest version, or None if there is none yet."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.error(action, exc) from None
        if not stat.S_ISDIR(mode):
            raise TransportError(f"Cannot {action} Delta table '{self.shown}': it is not a folder")
        try:
            return DeltaTable(str(self.path))
        except TableNotFoundError:
            return None
        except _FAILURES as exc:
            raise self.error(action, exc) from None

    def create(self, action: str) -> DeltaTable:
        """Create the table, empty, if it is missing (racing creators do no harm); load it."""
        try:
            DeltaTable.create(str(self.path), schema=self.layout.schema, mode="ignore")
        except _FAILURES as exc:
            if self.load(action) is None:  # not created meanwhile by another writer
                raise self.error(action, exc) from None
        table = self.load(action)
        if table is None:
            raise TransportError(f"Cannot {action} Delta table '{self.shown}': it was not created")
        return table

    def position(self, table: DeltaTable | None, uid: str, action: str) -> int | None:
        """The position recorded in ``table`` for connector ``uid``."""
        if table is None:
            return None
        try:
            return table.transaction_version(uid)
        except _FAILURES as exc:
            raise self.error(action, exc) from None

    def check_schema(self, table: DeltaTable, action: str) -> None:
        """Refuse a table whose columns are not the connector's."""
        try:
            fields = [(f.name, str(f.type)) for f in table.schema().fields]
        except _FAILURES as exc:
            raise self.error(action, exc) from None
        if fields != [(f.name, str(f.type)) for f in self.layout.delta_schema.fields]:
            raise TransportError(
                f"Cannot {action} Delta table '{self.shown}': its columns are not "
                + self.layout.described()[:300]
            )


def _renewal_seconds() -> float:
    """How often a long step renews the executor's lease: a quarter of the lease."""
    lease = float(current_app.config["WORKER_LEASE_SECONDS"]) if has_app_context() else 30.0
    return max(0.05, lease / 4)


class DeltaReset:
    """A reset's staging copy: parquet files beside the table, switched in by one commit.

    Named ``.<table folder name>.reset-<epoch>``: the executor's fencing epoch,
    so a stale executor's leftover is told apart and removed by the next one.
    """

    def __init__(
        self, table: _Table, uid: str, epoch: int, keep_alive: KeepAlive | None = None
    ) -> None:
        self.table = table
        self.uid = uid
        self.keep_alive = keep_alive
        self.staging = table.path.with_name(f"{self.prefix(table.path)}{epoch}")
        self.parts = 0
        # Data files written into the table's folder that no commit names yet.
        self.written: list[Path] = []
        self.switched = False
        # Mode rows: the keys staged so far (a key twice in the snapshot is refused): the
        # key's value, or a tuple of them for a key of several columns.
        self.keys: set[Any] = set()
        try:
            table.path.parent.mkdir(parents=True, exist_ok=True)
            self.remove_leftovers(table.path, epoch)
            _remove(self.staging)
            self.staging.mkdir()
        except OSError as exc:
            raise table.error("reset", exc) from None

    @staticmethod
    def prefix(table: Path) -> str:
        """The name that every staging folder of ``table`` starts with."""
        return f".{table.name}.reset-"

    @classmethod
    def remove_leftovers(cls, table: Path, epoch: int) -> None:
        """Delete staging folders of lower epochs only (a higher one is the lease holder's)."""
        prefix = cls.prefix(table)
        for entry in os.scandir(table.parent):
            suffix = entry.name[len(prefix) :]
            if (
                entry.name.startswith(prefix)
                and suffix.isdigit()
                and int(suffix) < epoch
                and entry.is_dir(follow_symlinks=False)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)

    def append(self, records: Sequence[str]) -> int:
        """Stage snapshot records (canonical JSON texts) as one parquet file; return their bytes.

        With declared columns the records are converted here, so a record the
        columns cannot hold fails the reset as refused, before anything is switched in.
        """
        if not records:
            return 0
        layout = self.table.layout
        try:
            staged = layout.stage(records)
            if layout.rows:
                self._check_keys(staged)
        except Refused as exc:
            raise self.table.refused("reset", exc) from None
        part = self.staging / f"part-{self.parts:06d}.parquet"
        try:
            pq.write_table(staged, part)
        except _FAILURES as exc:
            raise self.table.error("stage the snapshot of", exc) from None
        self.parts += 1
        if layout.columns is None:
            return _text_bytes(staged.column("record"))
        # The UTF-8 length of the texts: one encoding of them all, less the separators.
        return len("\n".join(records).encode()) - len(records) + 1

    def _check_keys(self, staged: pa.Table) -> None:
        """Refuse a snapshot (mode rows) that holds one key twice: the view is not keyed so.

        The keys of a batch are added to those staged before as a set at once; only
        a batch that repeats one is looked through, for the key to name.
        """
        columns = self.table.layout.columns
        assert columns is not None
        values = [staged.column(name).to_pylist() for name in columns.key]
        keys = list(zip(*values, strict=True)) if len(values) > 1 else values[0]
        batch = set(keys)
        if len(batch) == len(keys) and self.keys.isdisjoint(batch):
            self.keys |= batch
            return
        seen: set[Any] = set()
        for key in keys:
            if key in self.keys or key in seen:
                shown = json.dumps(list(key) if len(values) > 1 else [key], default=str)[:80]
                raise Refused(
                    f"the snapshot holds two records with the key {shown}: the view is "
                    f"not keyed by {', '.join(columns.key)}"
                )
            seen.add(key)

    def switch_in(self, snapshot_seq: int, fence: Callable[[], None]) -> int | None:
        """Replace the table's contents with the staged snapshot in one commit.

        Writes the table's data files, then calls ``fence()``, then commits;
        returns the table's version after it (None if it cannot be read back).
        """
        try:
            try:
                actions = self._write_data(snapshot_seq)
                current = self.table.load("reset") or self.table.create("reset")
                self.table.check_schema(current, "reset")
            except _FAILURES as exc:
                raise self.table.error("reset", exc) from None
        except BaseException:
            self._remove_written()
            raise
        try:
            fence()
        except BaseException:
            self._remove_written()
            raise
        try:
            current.create_write_transaction(
                actions,
                mode="overwrite",
                schema=self.table.layout.schema,
                commit_properties=_txn(self.uid, snapshot_seq),
            )
        except CommitFailedError:
            self._remove_written()
            raise TransportError(
                f"Cannot reset Delta table '{self.table.shown}': another writer committed "
                "to it meanwhile; the reset can be tried again"
            ) from None
        except _FAILURES as exc:
            # A commit that landed but failed after it (writing a checkpoint) is done;
            # the files of one whose fate is unknown are kept (a vacuum removes them).
            landed = self._landed(snapshot_seq, actions)
            if landed is False:
                self._remove_written()
            elif landed is None:
                self.written = []  # perhaps committed: never deleted here
            if not landed:
                raise self.table.error("reset", exc) from None
        self.written = []
        self.switched = True
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            return DeltaTable(str(self.table.path)).version()
        except _FAILURES:
            return None

    def discard(self) -> None:
        """Delete the staging folder and any data file no commit names (never raises)."""
        try:
            if not self.switched:
                self._remove_written()
            shutil.rmtree(self.staging, ignore_errors=True)
        except Exception:  # noqa: S110 (a leftover is removed by the next reset)
            pass

    def _write_data(self, snapshot_seq: int) -> list[AddAction]:
        """Write the staged records as the table's data files; return their add actions."""
        self.table.path.mkdir(parents=True, exist_ok=True)
        layout = self.table.layout
        actions: list[AddAction] = []
        writer: pq.ParquetWriter | None = None
        rows = text = 0
        # Rewriting thousands of parts on a slow disk can outlast the lease: renewed
        # as it goes, no other executor takes the reset over (and removes this
        # staging folder) while it is read here.
        every = _renewal_seconds()
        renew_at = time.monotonic() + every
        try:
            for index in range(self.parts):
                if self.keep_alive is not None and time.monotonic() >= renew_at:
                    self.keep_alive()
                    renew_at = time.monotonic() + every
                with pq.ParquetFile(self.staging / f"part-{index:06d}.parquet") as staged:
                    batch = staged.read(use_threads=False)
                if writer is None:
                    name = f"part-{len(actions):05d}-{uuid.uuid4()}-c000.{COMPRESSION}.parquet"
                    self.written.append(self.table.path / name)
                    writer = pq.ParquetWriter(
                        self.written[-1], layout.schema, compression=COMPRESSION
                    )
                writer.write_table(layout.data(batch, snapshot_seq))
                rows += batch.num_rows
                if layout.columns is None:
                    text += _text_bytes(batch.column("record"))
                else:
                    text += batch.nbytes
                if text >= DATA_FILE_TEXT_BYTES or index == self.parts - 1:
                    writer.close()
                    writer = None
                    actions.append(self._added(self.written[-1], rows, snapshot_seq))
                    rows = text = 0
        finally:
            if writer is not None:  # a failure: the caller deletes the file
                with contextlib.suppress(Exception):
                    writer.close()
        if actions:
            fsync_dir(self.table.path)
        return actions

    def _added(self, path: Path, rows: int, snapshot_seq: int) -> AddAction:
        """Flush a written data file to disk; return the add action that names it."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        stats: dict[str, Any] = {"numRecords": rows}
        if not self.table.layout.rows:
            # What readers count and skip files by; declared columns carry no bounds.
            bounds = {"seq": snapshot_seq, "op": "insert"}
            nulls = {"seq": 0, "op": 0}
            if self.table.layout.columns is None:
                nulls["record"] = 0
            stats.update(minValues=bounds, maxValues=bounds, nullCount=nulls)
        return AddAction(
            path.name, info.st_size, {}, info.st_mtime_ns // 1_000_000, True, json.dumps(stats)
        )

    def _landed(self, snapshot_seq: int, actions: list[AddAction]) -> bool | None:
        """Whether the switch's commit is in the table (None: the table cannot be read)."""
        try:
            table = DeltaTable(str(self.table.path))
            if table.transaction_version(self.uid) != snapshot_seq:
                return False
            names = {os.path.basename(uri) for uri in table.file_uris()}
        except TableNotFoundError:
            return False
        except _FAILURES:
            return None
        return all(action.path in names for action in actions)

    def _remove_written(self) -> None:
        for path in self.written:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.written = []


def _remove(path: Path) -> None:
    """Delete a folder tree, a file or a link at ``path``, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class DeltaTransport:
    """Writes a view's changes to a Delta Lake change table, exactly once."""

    name = "delta"

    def validate_config(self, config: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Check the settings; return them with the mode filled in."""
        normal: dict[str, Any] = {"path": self.resolve(config, tenant)[0]}
        normal.update(self._layout_settings(config))
        return normal

    @staticmethod
    def _layout_settings(config: dict[str, Any]) -> dict[str, Any]:
        """Check ``mode``, ``columns`` and ``key`` together; return them normalised."""
        mode = config.get("mode", "changes")
        columns = config.get("columns")
        key = config.get("key")
        normal: dict[str, Any] = {"mode": mode}
        if columns is not None:
            if not isinstance(columns, dict) or not 1 <= len(columns) <= MAX_COLUMNS:
                raise _refuse(
                    "columns",
                    "The delta transport's columns are not valid",
                    f"An object of 1 to {MAX_COLUMNS} columns, name -> type, is required.",
                )
            problems: list[str] = []
            seen: set[str] = set()
            for name, type_name in columns.items():
                if not COLUMN.match(name):
                    problems.append(
                        f"Column '{name[:130]}': a name is letters, digits and _, not "
                        "starting with a digit (at most 128)."
                    )
                elif name.lower().startswith(RESERVED_PREFIX):
                    problems.append(
                        f"Column '{name}': names starting {RESERVED_PREFIX} are reserved."
                    )
                elif mode == "changes" and name.lower() in CHANGE_COLUMNS:
                    problems.append(f"Column '{name}': mode changes adds seq and op itself.")
                elif name.lower() in seen:
                    problems.append(f"Column '{name}': named twice (names ignore case in Delta).")
                if not is_type(type_name):
                    shown = json.dumps(type_name)[:60]
                    problems.append(
                        f"Column '{name[:130]}': unknown type {shown}; one of: "
                        f"{', '.join(TYPES)}, decimal(p,s) (p 1 to 38, s 0 to p)."
                    )
                seen.add(name.lower())
            if problems:
                raise InvalidRequest(
                    "The delta transport's columns are not valid",
                    details={"transport.config.columns": problems},
                )
            normal["columns"] = dict(columns)
        if key is not None:
            if mode != "rows":
                raise _refuse(
                    "key", "The delta transport's key is not valid", "A key applies to mode rows."
                )
            if (
                not isinstance(key, list)
                or not 1 <= len(key) <= MAX_KEY_COLUMNS
                or not all(isinstance(k, str) for k in key)
                or len(set(key)) != len(key)
            ):
                raise _refuse(
                    "key",
                    "The delta transport's key is not valid",
                    f"A list of 1 to {MAX_KEY_COLUMNS} distinct column names is required.",
                )
            missing = [k for k in key if k not in (columns or {})]
            if missing:
                raise _refuse(
                    "key",
                    "The delta transport's key is not valid",
                    f"Not declared in columns: {', '.join(m[:130] for m in missing)}.",
                )
            normal["key"] = list(key)
        if mode == "rows":
            if columns is None:
                raise _refuse(
                    "columns",
                    "Mode rows needs the table's columns",
                    "Required in mode rows: an object of columns, name -> type.",
                )
            if key is None:
                raise _refuse(
                    "key",
                    "Mode rows needs a key",
                    "Required in mode rows: the columns that identify a record.",
                )
        return normal

    def shown_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """A path holds no secret: the settings are shown as they are."""
        return dict(config)

    def sink_key(self, config: dict[str, Any], tenant: str) -> str:
        """The table's identity: ``delta:`` and its resolved folder, relative to ``SINK_DIR``."""
        resolved = self.resolve(config, tenant)[1]
        root = Path(current_app.config["SINK_DIR"]).resolve()
        return f"delta:{resolved.relative_to(root)}"

    def config_schema(self) -> dict[str, Any]:
        """The settings' JSON schema (:mod:`app.transports.delta_spec`)."""
        return config_schema()

    def resolve(self, config: dict[str, Any], tenant: str) -> tuple[str, Path]:
        """Validate the settings; return the path as given and as resolved."""
        if not isinstance(config, dict):
            raise InvalidRequest(
                "The delta transport's settings must be an object",
                details={"transport.config": ["An object is required."]},
            )
        unknown = sorted(set(config) - set(SETTINGS), key=str)
        if unknown:
            raise InvalidRequest(
                "Unknown settings of the delta transport",
                details={f"transport.config.{k}": ["Unknown setting."] for k in unknown},
            )
        if config.get("mode", "changes") not in MODES:
            raise _refuse(
                "mode", "The delta transport's mode is not valid", f"One of: {', '.join(MODES)}."
            )
        path = config.get("path")
        if not isinstance(path, str) or not path:
            raise _refuse("path", "The delta transport needs a 'path'", "A string is required.")
        try:
            resolved = resolve_sink_path(path, tenant)
        except ValueError:
            raise _refuse(
                "path",
                "The sink path is not allowed",
                "The path must name a folder inside the tenant's sink directory "
                "(relative paths are taken from it), with no NUL character.",
            ) from None
        try:
            mode = os.stat(resolved).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None  # created on the first write (or refused then)
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise _refuse(
                "path", "The sink path is not allowed", f"The path cannot be used: {exc.strerror}"
            ) from None
        if mode is not None and not stat.S_ISDIR(mode):
            raise _refuse(
                "path",
                "The sink path is not a folder",
                "The path must name a folder (the table's), not a file.",
            )
        if resolved.name.startswith(".") and ".reset-" in resolved.name:
            raise _refuse(
                "path", "The sink path is not allowed", "Names like '.x.reset-N' are reserved."
            )
        return path, resolved

    def table_of(self, target: Any) -> _Table:
        """A connector's table, its path checked again (a link may have changed)."""
        shown = target.config["path"]
        try:
            path = resolve_sink_path(shown, target.view.pipeline.tenant)
        except ValueError:
            raise TransportError(
                f"Delta table '{shown}': the path must name a folder inside the tenant's "
                "sink directory"
            ) from None
        return _Table(path, shown, target.view.pipeline.tenant, _Layout(target.config))

    def position(self, target: Any) -> int | None:
        """The seq the table records for the connector; None if no table or none recorded."""
        table = self.table_of(target)
        return table.position(table.load("read"), target.uid, "read")

    def apply(self, target: Any, rows: Sequence[LogRow], *, epoch: int) -> Applied:
        """Apply the changes and record ``rows[-1][0]``, in one commit (see the module's text).

        Mode ``changes`` appends them; mode ``rows`` merges their net changes on
        the key. ``epoch`` is not needed: the position check is what fences a
        stale writer. A batch the declared columns cannot hold is refused (a
        poison ``TransportError``), once the position says it is due.
        """
        if not rows:
            return Applied(0, None, skipped=True)
        table = self.table_of(target)
        first, last = rows[0][0], rows[-1][0]
        size = sum(len(row[2]) if row[2].isascii() else len(row[2].encode()) for row in rows)
        data: pa.Table | None = None
        for _ in range(COMMIT_ATTEMPTS):
            current = table.load("write")
            held = table.position(current, target.uid, "write")
            if (held or 0) >= last:
                return Applied(0, None, skipped=True)
            if (held or 0) != first - 1:
                holds = "no position" if held is None else f"position {held}"
                raise SinkMoved(
                    f"Delta table '{table.shown}' holds {holds} for this connector; "
                    f"the batch starts after {first - 1}",
                    position=held,
                )
            if current is None:
                table.create("write")
                continue  # decide again on the table as loaded
            table.check_schema(current, "write")
            if data is None:
                try:
                    layout = table.layout
                    data = layout.merge_source(rows) if layout.rows else layout.changes(rows)
                except Refused as exc:
                    raise table.refused("write", exc) from None
            try:
                if not table.layout.rows:
                    write_deltalake(
                        current,
                        data,
                        mode="append",
                        writer_properties=WRITER_PROPERTIES,
                        commit_properties=_txn(target.uid, last),
                    )
                elif data.num_rows and self._merge(table, current, data, _txn(target.uid, last)):
                    pass
                else:  # nothing to change (cancelled out, or deletes of no row): the position
                    current.create_write_transaction(
                        [],
                        mode="append",
                        schema=current.schema(),
                        commit_properties=_txn(target.uid, last),
                    )
                    current.update_incremental()  # (not moved by a transaction's commit)
                return Applied(size, current.version())
            except CommitFailedError:
                continue  # another writer committed since the load: decide again
            except _FAILURES as exc:
                raise table.error("write", exc) from None
        raise TransportError(
            f"Cannot write Delta table '{table.shown}': other writers kept committing to it"
        )

    @staticmethod
    def _merge(
        table: _Table, current: DeltaTable, source: pa.Table, properties: CommitProperties
    ) -> bool:
        """One MERGE commit of a batch's net changes on the key (mode rows), with its position.

        Matched on the key: a delete removes the row only if every column still
        equals the record's (nulls equal), an insert replaces the row; an
        insert whose key is not in the table adds a row; a delete that finds
        no row does nothing. Returns False when the MERGE changed no row:
        ``deltalake`` then makes no commit, so the position is not recorded yet.
        """
        on, unchanged = table.layout.merge_predicates()
        before = current.version()
        (
            current.merge(
                source,
                predicate=on,
                source_alias="s",
                target_alias="t",
                writer_properties=WRITER_PROPERTIES,
                commit_properties=properties,
                # The batch is small and in memory: read twice, it lets the MERGE narrow
                # its scan of the table to the batch's keys.
                streamed_exec=False,
            )
            .when_matched_delete(predicate=unchanged)
            .when_matched_update_all(predicate=f"NOT s.`{DELETE_FLAG}`", except_cols=[DELETE_FLAG])
            .when_not_matched_insert_all(
                predicate=f"NOT s.`{DELETE_FLAG}`", except_cols=[DELETE_FLAG]
            )
            .execute()
        )
        return current.version() != before

    def skip_to(self, target: Any, *, held: int, to_seq: int, epoch: int) -> Applied:
        """Record ``to_seq`` as the position, from ``held``, in a commit with no rows (a skip)."""
        table = self.table_of(target)
        for _ in range(COMMIT_ATTEMPTS):
            current = table.load("write")
            position = table.position(current, target.uid, "write")
            if (position or 0) >= to_seq:
                return Applied(0, None, skipped=True)
            if (position or 0) != held:
                raise SinkMoved(
                    f"Delta table '{table.shown}' holds position {position or 0}, not {held}",
                    position=position,
                )
            if current is None:
                table.create("write")
                continue
            try:
                current.create_write_transaction(
                    [],
                    mode="append",
                    schema=current.schema(),
                    commit_properties=_txn(target.uid, to_seq),
                )
                return Applied(0, current.version())
            except CommitFailedError:
                continue
            except _FAILURES as exc:
                raise table.error("write", exc) from None
        raise TransportError(
            f"Cannot write Delta table '{table.shown}': other writers kept committing to it"
        )

    def begin_reset(
        self, target: Any, epoch: int, keep_alive: KeepAlive | None = None
    ) -> DeltaReset:
        """Start a reset's staging folder beside the table (lower epochs' ones are removed)."""
        return DeltaReset(self.table_of(target), target.uid, epoch, keep_alive)
