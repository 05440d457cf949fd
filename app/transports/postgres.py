"""The ``postgres`` transport: a view delivered into a PostgreSQL table.

Settings::

    {"dsn_env": "SINK_DSN_WAREHOUSE", "table": "analytics.orders",
     "key": ["order_id"], "mode": "rows"}

- ``dsn_env`` names an environment variable of the server (and of every
  ``pipeline-manager worker``) that holds the sink database's DSN, so no secret is
  stored. Only names that start with ``POSTGRES_SINK_DSN_PREFIX``
  (``SINK_DSN_`` by default) may be named: a tenant cannot point a connector
  at the service's own database or at any other variable. With several
  tenants, ``POSTGRES_SINK_DSN_TENANTS`` says which tenants may name each
  variable (``{"SINK_DSN_ACME": ["acme"], "SINK_DSN_SHARED": "*"}``): once it
  is set, a variable it does not list may be named by none, and a worker
  checks the grant again before each connection, so a grant taken back stops
  delivery into that database.
- ``table``: ``name`` or ``schema.name``; names are taken as written (quoted).
- ``mode``: ``rows`` (default): one column per top-level field of a record,
  converted by PostgreSQL's ``jsonb_populate_record`` rules into the column's
  type (the table must exist; a field the table lacks is refused, a column
  the record lacks gets its default; an identity column the records lack
  is numbered by the table, after a reset too). ``jsonb``: one ``record jsonb``
  column (the table is created when missing).
- ``key`` (``rows`` only): columns that identify a record. With a key, an
  insert replaces the row with the same key (``INSERT ... ON CONFLICT``: the
  table needs a unique index on the key) and a delete removes the row with the
  record's key only if it still equals the record. Without a key, an insert
  adds a row and a delete removes one row equal to the record; a delete that
  finds none means the table no longer holds the view, and a snapshot is owed.

Exactly once (see :mod:`app.transports.tables`): a table
``<schema>.pipeline_manager_progress`` in the sink database keeps each
connector's position (``connector_uid``, ``seq``, ``epoch``). A batch is one
transaction that locks the connector's progress row, checks that the position
is the batch's start, applies the batch's net changes (deletes, then inserts)
and moves the position to its end. Every writer of a connector locks that row
first, so two writers (one stalled past its lease) are serialised, and the
second finds the batch already there.

Reset: the snapshot is loaded with ``COPY`` into an unlogged staging table
``_pm_reset_<connector uid>_<epoch>`` (``LIKE`` the table: defaults,
constraints, indexes; named from the connector, so no other table's reset can
take it for its own). At the end, one transaction locks the progress row, deletes the
table's rows, inserts the staging table's, records the snapshot's position
and commits: readers see the old rows until that commit and the whole
snapshot after it (PostgreSQL's MVCC: they are never blocked, and the table
keeps its grants, views and indexes). A staging table of the connector's of a
lower epoch is a leftover of an executor that lost its lease, and is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from flask import current_app, has_app_context
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from app.errors import InvalidRequest
from app.transports.base import KeepAlive, TransportError
from app.transports.postgres_spec import (
    IDENTIFIER,
    MAX_KEY_COLUMNS,
    MODES,
    config_schema,
    dsn_grants,
)
from app.transports.tables import Applied, LogRow, SinkDiverged, SinkMoved

PROGRESS_TABLE = "pipeline_manager_progress"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Sink tables whose progress table (and jsonb table) this process saw made, by
# (variable, schema, table, mode).
_PROGRESS_CURRENT: set[tuple[str, str, str, str]] = set()
# A reset's staging table: _pm_reset_<connector uid, 32 hex digits>_<epoch>. Sink tables
# may not be named so.
STAGING_PREFIX = "_pm_reset_"
# Errors that sending the same batch again cannot cure: the table or its
# columns do not fit the records. The connector fails until a reset.
POISON = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.InvalidColumnReference,
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.WrongObjectType,
    psycopg.errors.CardinalityViolation,
    psycopg.errors.InvalidParameterValue,
)


def _refuse(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        "The postgres transport's settings are not valid",
        details={f"transport.config.{field}": [message]},
    )


def _prefix() -> str:
    """The prefix of the variables a connector may name (``POSTGRES_SINK_DSN_PREFIX``)."""
    if has_app_context():
        return str(current_app.config["POSTGRES_SINK_DSN_PREFIX"])
    return "SINK_DSN_"


def dsn_granted(dsn_env: str, tenant: str) -> bool:
    """Whether ``tenant`` may name ``dsn_env`` (every tenant may while no grants are set)."""
    grants = dsn_grants(current_app.config) if has_app_context() else None
    if grants is None:
        return True
    tenants = grants.get(dsn_env, frozenset())
    return "*" in tenants or tenant in tenants


LOOPBACK = frozenset({"", "localhost", "127.0.0.1", "::1"})


def database_of(dsn: str) -> str | None:
    """``host:port/dbname`` of a DSN, defaults filled in as libpq does; None if malformed.

    Two variables naming one database (with other users, passwords or options)
    give the same, so the one-connector-per-table check sees through them. The
    loopback names and a local socket are one host.
    """
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return None
    host = (info.get("host") or info.get("hostaddr") or os.environ.get("PGHOST") or "").lower()
    if host in LOOPBACK or host.startswith("/"):
        host = "localhost"
    port = info.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = (
        info.get("dbname")
        or os.environ.get("PGDATABASE")
        or info.get("user")
        or os.environ.get("PGUSER")
        or ""
    )
    return f"{host}:{port}/{dbname}"


def _timeout_ms() -> int:
    """Statement and lock waits: a third of the worker's lease, so no sink outlives it."""
    lease = float(current_app.config["WORKER_LEASE_SECONDS"]) if has_app_context() else 30.0
    return max(100, int(lease / 3 * 1000))


def split_table(table: str) -> tuple[str, str]:
    """``schema.name`` or ``name`` (schema ``public``) as two identifiers."""
    parts = table.split(".")
    if len(parts) == 1:
        return "public", parts[0]
    return parts[0], parts[1]


def _message(exc: BaseException) -> str:
    """A driver error in one line: PostgreSQL's own message, without the DSN."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return primary
    if isinstance(exc, psycopg.OperationalError):
        return "the sink database cannot be reached"
    return type(exc).__name__


class _Table:
    """One sink table of one connector: names, columns, and the statements on it."""

    def __init__(self, target: Any) -> None:
        config = target.config
        self.uid = str(target.uid)
        self.dsn_env = config["dsn_env"]
        self.tenant = target.view.pipeline.tenant
        self.schema, self.name = split_table(config["table"])
        self.shown = config["table"]
        self.mode = config.get("mode", "rows")
        self.key: list[str] = list(config.get("key") or [])
        self.ident = sql.Identifier(self.schema, self.name)
        self.progress = sql.Identifier(self.schema, PROGRESS_TABLE)
        self._columns: dict[str, bool] | None = None
        # A batch ends by then (time.monotonic()), checked between statements: a third
        # of the worker's lease, so a slow table costs a retry, not the lease.
        self.deadline = time.monotonic() + _timeout_ms() / 1000
        # Identity columns (GENERATED ... AS IDENTITY): a reset lets the table number
        # the rows whose records do not carry them.
        self.identity: frozenset[str] = frozenset()

    # -- connections ----------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        if not dsn_granted(self.dsn_env, self.tenant):
            raise TransportError(
                f"The variable {self.dsn_env} is not granted to this tenant "
                "(POSTGRES_SINK_DSN_TENANTS)"
            )
        dsn = os.environ.get(self.dsn_env)
        if not dsn:
            raise TransportError(f"The environment variable {self.dsn_env} is not set")
        timeout = _timeout_ms()
        try:
            return psycopg.connect(
                dsn,
                connect_timeout=max(1, timeout // 1000),
                application_name="pipeline-manager",
                # A writer stopped inside a transaction (a stall past its lease)
                # holds the connector's progress row: the server ends its session
                # after a lease, so the next holder is not kept waiting.
                options=f"-c statement_timeout={timeout} -c lock_timeout={timeout} "
                f"-c idle_in_transaction_session_timeout={3 * timeout}",
            )
        except psycopg.Error as exc:
            raise TransportError(
                f"Cannot connect to the sink database ({self.dsn_env}): {_message(exc)}"
            ) from None

    def check_deadline(self) -> None:
        """Give the batch up (a plain failure, tried again later) once it took too long."""
        if time.monotonic() > self.deadline:
            raise TransportError(
                f"Sink table {self.shown}: the batch took longer than "
                f"{_timeout_ms() / 1000:.1f} s (a third of the lease); it is tried again"
            )

    def error(self, exc: psycopg.Error, doing: str) -> TransportError:
        return TransportError(
            f"Sink table {self.shown}: {doing}: {_message(exc)}", poison=isinstance(exc, POISON)
        )

    # -- schema ---------------------------------------------------------------

    def ensure_progress(self, conn: psycopg.Connection, again: bool = False) -> None:
        """Create the progress table (and a ``jsonb`` mode's table) if missing.

        Once per process and table (DDL locks what it touches, even when it
        changes nothing), or ``again`` (a reset: a ``jsonb`` table may be gone).
        """
        key = (self.dsn_env, self.schema, self.name, self.mode)
        if key in _PROGRESS_CURRENT and not again:
            return
        statements = [
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (connector_uid text PRIMARY KEY, "
                "seq bigint NOT NULL, epoch bigint NOT NULL, "
                "updated_at timestamptz NOT NULL DEFAULT now(), "
                "table_oid bigint, table_filenode bigint)"
            ).format(self.progress)
        ]
        # A progress table made before the table's identity was recorded.
        statements.append(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS table_oid bigint, "
                "ADD COLUMN IF NOT EXISTS table_filenode bigint"
            ).format(self.progress)
        )
        if self.mode == "jsonb":
            statements.append(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (record jsonb NOT NULL)").format(self.ident)
            )
            # What deletes look up: one equal record (a hash index: no size limit on
            # the record, unlike a btree's).
            index = f"pm_{hashlib.sha256(self.name.encode()).hexdigest()[:20]}_record"
            statements.append(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hash (record)").format(
                    sql.Identifier(index), self.ident
                )
            )
        for statement in statements:
            for _attempt in range(3):
                try:
                    with conn.transaction():
                        conn.execute(statement)
                    break
                except (
                    psycopg.errors.UniqueViolation,
                    psycopg.errors.DuplicateTable,
                    # The loser of two CREATE TABLE IF NOT EXISTS at once may instead
                    # be told 'type "<table>" already exists' (the table's row type).
                    psycopg.errors.DuplicateObject,
                ):
                    continue  # created at the same moment by another writer
        _PROGRESS_CURRENT.add(key)

    def columns(self, conn: psycopg.Connection, relation: str | None = None) -> dict[str, bool]:
        """The table's columns, each with whether it can be written (not generated)."""
        if relation is None and self._columns is not None:
            return self._columns
        name = sql.Identifier(self.schema, relation or self.name).as_string(conn)
        rows = conn.execute(
            "SELECT a.attname, a.attgenerated = '', a.attidentity <> '' FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (name,),
        ).fetchall()
        if not rows:
            raise TransportError(
                f"The sink table {self.shown} does not exist: create it "
                "(mode rows needs one column per field)",
                poison=True,
            )
        columns = {str(name): bool(writable) for name, writable, _ in rows}
        if relation is None:
            self._columns = columns
            self.identity = frozenset(str(name) for name, _, identity in rows if identity)
        return columns

    def check_fields(self, fields: set[str], columns: dict[str, bool]) -> list[str]:
        """The written columns for records with ``fields``; refuse fields the table lacks."""
        missing = sorted(f for f in fields if f not in columns or not columns[f])
        if missing:
            shown = ", ".join(missing[:10])
            raise TransportError(
                f"Sink table {self.shown} has no column for the field(s) {shown}", poison=True
            )
        return [c for c in columns if c in fields]

    # -- positions ------------------------------------------------------------

    def lock_position(self, conn: psycopg.Connection) -> int:
        """Lock the connector's progress row (created at 0) and return its position."""
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (connector_uid, seq, epoch) VALUES (%s, 0, 0) "
                "ON CONFLICT (connector_uid) DO NOTHING"
            ).format(self.progress),
            (self.uid,),
        )
        row = conn.execute(
            sql.SQL("SELECT seq FROM {} WHERE connector_uid = %s FOR UPDATE").format(self.progress),
            (self.uid,),
        ).fetchone()
        return int(row[0]) if row else 0

    def set_position(self, conn: psycopg.Connection, seq: int, epoch: int) -> int:
        """Record the position, and the table's identity; return the transaction's id.

        The identity (its OID, and its file: a TRUNCATE gives the table a new one)
        is what :meth:`PostgresTransport.position` checks the table against.
        """
        name = self.ident.as_string(conn)
        conn.execute(
            sql.SQL(
                "UPDATE {} SET seq = %s, epoch = greatest(epoch, %s), updated_at = now(), "
                "table_oid = to_regclass(%s)::oid, "
                "table_filenode = pg_relation_filenode(to_regclass(%s)) "
                "WHERE connector_uid = %s"
            ).format(self.progress),
            (seq, epoch, name, name, self.uid),
        )
        row = conn.execute("SELECT txid_current()").fetchone()
        return int(row[0]) if row else 0

    # -- changes --------------------------------------------------------------

    def insert(self, conn: psycopg.Connection, texts: list[str], relation: sql.Composable) -> None:
        """Insert records (with a key: replace the row with the same key)."""
        if not texts:
            return
        payload = "[" + ",".join(texts) + "]"
        if self.mode == "jsonb":
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (record) SELECT e FROM jsonb_array_elements(%s::jsonb) e"
                ).format(relation),
                (payload,),
            )
            return
        fields: set[str] = set()
        for text in texts:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise TransportError("Mode rows needs records that are JSON objects", poison=True)
            fields.update(record)
        columns = self.check_fields(fields, self.columns(conn))
        if not columns:
            raise TransportError("Records without fields cannot be rows", poison=True)
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        statement = sql.SQL(
            "INSERT INTO {rel} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{t}, %s)"
        ).format(rel=relation, cols=names, t=self.ident)
        if self.key:
            others = [c for c in columns if c not in self.key]
            conflict = sql.SQL(" ON CONFLICT ({}) ").format(
                sql.SQL(", ").join(map(sql.Identifier, self.key))
            )
            if others:
                action = sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in others
                )
            else:
                action = sql.SQL("DO NOTHING")
            statement = statement + conflict + action
        conn.execute(statement, (payload,))

    def delete(self, conn: psycopg.Connection, deleted: list[tuple[str, int]]) -> None:
        """Remove ``n`` rows equal to each record (with a key: its row, if still equal)."""
        if not deleted:
            return
        if self.mode == "jsonb":
            # The whole batch's deletes in one statement, each record found by the index.
            statement = sql.SQL(
                "WITH d(record, n) AS (SELECT e->'r', (e->>'n')::int "
                "FROM jsonb_array_elements(%s::jsonb) e) "
                "DELETE FROM {t} WHERE ctid IN (SELECT v.ctid FROM d CROSS JOIN LATERAL "
                "(SELECT ctid FROM {t} t WHERE t.record = d.record LIMIT d.n) v)"
            ).format(t=self.ident)
            payload = "[" + ",".join(f'{{"r":{text},"n":{n}}}' for text, n in deleted) + "]"
            self._delete_many(conn, {statement.as_string(conn): [(payload,)]}, deleted)
            return
        columns = self.columns(conn)
        by_shape: dict[str, list[tuple[Any, ...]]] = {}
        for text, n in deleted:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise TransportError("Mode rows needs records that are JSON objects", poison=True)
            self.check_fields(set(record), columns)
            conditions = []
            for field in sorted(record):
                column = sql.Identifier(field)
                if record[field] is None:
                    conditions.append(sql.SQL("t.{} IS NULL").format(column))
                else:
                    conditions.append(sql.SQL("t.{c} = d.{c}").format(c=column))
            where = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")
            statement = sql.SQL(
                "DELETE FROM {t} WHERE ctid IN (SELECT t.ctid FROM {t} t, "
                "jsonb_populate_record(NULL::{t}, %s::jsonb) d WHERE {w} LIMIT %s)"
            ).format(t=self.ident, w=where)
            by_shape.setdefault(statement.as_string(conn), []).append((text, n))
        self._delete_many(conn, by_shape, deleted)

    def _delete_many(
        self,
        conn: psycopg.Connection,
        statements: dict[str, list[tuple[Any, ...]]],
        deleted: list[tuple[str, int]],
    ) -> None:
        removed = 0
        with conn.cursor() as cursor:
            for statement, params in statements.items():
                for param in params:
                    self.check_deadline()
                    # One at a time, not executemany: psycopg pipelines that, and the
                    # server arms idle_in_transaction_session_timeout only at a Sync, so
                    # a writer frozen mid-pipeline (SIGSTOP) would hold the progress row
                    # for as long as it stays frozen.
                    cursor.execute(statement, param)
                    removed += max(0, cursor.rowcount)
        wanted = sum(n for _text, n in deleted)
        if not self.key and removed < wanted:
            raise SinkDiverged(
                f"Sink table {self.shown} lacks {wanted - removed} row(s) the view deletes: "
                "it was changed outside the service"
            )

    # -- staging ----------------------------------------------------------------

    def staging_prefix(self) -> str:
        """Where this connector's staging tables' names start: its uid, never another's."""
        return f"{STAGING_PREFIX}{self.uid.replace('-', '')}_"

    def staging_name(self, epoch: int) -> str:
        """The staging table of the connector's reset at ``epoch`` (at most 63 characters)."""
        return f"{self.staging_prefix()}{epoch}"

    def drop_leftovers(self, conn: psycopg.Connection, epoch: int) -> None:
        """Drop this connector's staging tables of lower epochs (their executors lost the lease).

        Named from the connector's uid, so two tables whose names share a prefix,
        or two tenants' connectors in one database, never drop each other's.
        """
        prefix = self.staging_prefix()
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND starts_with(tablename, %s)",
            (self.schema, prefix),
        ).fetchall()
        for (name,) in rows:
            tail = name[len(prefix) :]
            if tail.isdigit() and int(tail) < epoch:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.schema, name))
                    )


class PostgresReset:
    """A reset's staging table: filled with ``COPY``, switched in by one transaction."""

    def __init__(self, table: _Table, epoch: int) -> None:
        self.table = table
        self.epoch = epoch
        self.staging = table.staging_name(epoch)
        self.ident = sql.Identifier(table.schema, self.staging)
        self.fields: set[str] = set()  # of the records loaded (mode rows)
        self.conn = table.connect()
        self.conn.autocommit = True
        try:
            table.ensure_progress(self.conn, again=True)
            if table.mode == "rows":
                table.columns(self.conn)  # the table must exist
            table.drop_leftovers(self.conn, epoch)
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.ident))
            self.conn.execute(
                sql.SQL(
                    "CREATE UNLOGGED TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                    "INCLUDING GENERATED INCLUDING IDENTITY INCLUDING INDEXES)"
                ).format(self.ident, table.ident)
            )
            self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS pm_load (doc jsonb NOT NULL)")
        except psycopg.Error as exc:
            self.discard()
            raise table.error(exc, "cannot create its staging table") from None
        except TransportError:
            self.discard()
            raise
        self.conn.autocommit = False

    def append(self, records: Sequence[str]) -> int:
        """``COPY`` snapshot records into the staging table; return their bytes."""
        if not records:
            return 0
        data = "\n".join(records).replace("\\", "\\\\") + "\n"
        table = self.table
        try:
            with self.conn.transaction():
                with (
                    self.conn.cursor() as cursor,
                    cursor.copy("COPY pm_load (doc) FROM STDIN") as copy,
                ):
                    copy.write(data)
                if table.mode == "jsonb":
                    self.conn.execute(
                        sql.SQL("INSERT INTO {} (record) SELECT doc FROM pm_load").format(
                            self.ident
                        )
                    )
                else:
                    fields = {
                        row[0]
                        for row in self.conn.execute(
                            "SELECT DISTINCT k FROM pm_load, jsonb_object_keys(doc) k"
                        ).fetchall()
                    }
                    columns = table.check_fields(fields, table.columns(self.conn))
                    self.fields.update(fields)
                    names = sql.SQL(", ").join(map(sql.Identifier, columns))
                    self.conn.execute(
                        sql.SQL(
                            "INSERT INTO {s} ({cols}) SELECT {picked} FROM pm_load, "
                            "LATERAL jsonb_populate_record(NULL::{t}, pm_load.doc) AS r"
                        ).format(
                            s=self.ident,
                            cols=names,
                            t=table.ident,
                            picked=sql.SQL(", ").join(
                                sql.SQL("r.{}").format(sql.Identifier(c)) for c in columns
                            ),
                        )
                    )
                self.conn.execute("TRUNCATE pm_load")
        except psycopg.Error as exc:
            raise table.error(exc, "cannot load the snapshot") from None
        return len(data)

    def switch_in(self, snapshot_seq: int, fence: Callable[[], None]) -> int | None:
        """Replace the table's rows with the staging table's and record the position."""
        table = self.table
        try:
            with self.conn.transaction():
                table.lock_position(self.conn)
                # An identity column no record carried was numbered by the staging
                # table's own sequence: the table numbers those rows itself.
                writable = [
                    c
                    for c, ok in table.columns(self.conn).items()
                    if ok and (c not in table.identity or c in self.fields)
                ]
                names = sql.SQL(", ").join(map(sql.Identifier, writable))
                self.conn.execute(sql.SQL("DELETE FROM {}").format(table.ident))
                self.conn.execute(
                    sql.SQL(
                        "INSERT INTO {t} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM {s}"
                    ).format(t=table.ident, c=names, s=self.ident)
                )
                version = table.set_position(self.conn, snapshot_seq, self.epoch)
                fence()
        except psycopg.Error as exc:
            raise table.error(exc, "cannot switch the snapshot in") from None
        self.discard()
        return version

    def discard(self) -> None:
        """Drop the staging table and close the connection (never raises)."""
        conn = getattr(self, "conn", None)
        if conn is None or conn.closed:
            return
        try:
            conn.rollback()
            conn.autocommit = True
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.ident))
        except psycopg.Error:
            pass  # the next reset of a higher epoch drops it
        finally:
            conn.close()


class PostgresTransport:
    """Applies each batch and the connector's position in one sink transaction."""

    name = "postgres"

    # -- settings -------------------------------------------------------------

    def validate_config(self, config: dict[str, Any], *, tenant: str) -> dict[str, Any]:
        """Check the variable name, table, key and mode; return them with defaults filled in."""
        unknown = sorted(set(config) - {"dsn_env", "table", "key", "mode"})
        if unknown:
            raise InvalidRequest(
                "Unknown settings of the postgres transport",
                details={"transport.config": [f"Unknown setting '{k}'" for k in unknown]},
            )
        dsn_env = config.get("dsn_env")
        prefix = _prefix()
        if not isinstance(dsn_env, str) or not ENV_NAME.match(dsn_env):
            raise _refuse("dsn_env", "The name of an environment variable is required.")
        if not dsn_env.startswith(prefix) or dsn_env == prefix:
            raise _refuse("dsn_env", f"Only variables named {prefix}... may be used.")
        if not dsn_granted(dsn_env, tenant):
            # Before the check that it is set: no tenant learns another's variables.
            raise _refuse("dsn_env", f"The variable {dsn_env} is not granted to this tenant.")
        if not os.environ.get(dsn_env):
            raise _refuse("dsn_env", f"The variable {dsn_env} is not set on the server.")
        if database_of(os.environ[dsn_env]) is None:
            raise _refuse("dsn_env", f"The variable {dsn_env} does not hold a valid DSN.")
        table = config.get("table")
        if not isinstance(table, str) or not 1 <= len(table.split(".")) <= 2:
            raise _refuse("table", "A table name, or schema.name, is required.")
        if not all(IDENTIFIER.match(part) for part in table.split(".")):
            raise _refuse("table", "Names are letters, digits, _ and $ (at most 63).")
        if split_table(table)[1] == PROGRESS_TABLE:
            raise _refuse("table", f"The name {PROGRESS_TABLE} is reserved.")
        if split_table(table)[1].lower().startswith(STAGING_PREFIX):
            raise _refuse("table", f"Names starting {STAGING_PREFIX} are the service's (resets).")
        mode = config.get("mode", "rows")
        if mode not in MODES:
            raise _refuse("mode", "Must be one of: rows, jsonb.")
        key = config.get("key")
        if key is not None:
            if mode != "rows":
                raise _refuse("key", "A key applies to mode rows only.")
            if (
                not isinstance(key, list)
                or not 1 <= len(key) <= MAX_KEY_COLUMNS
                or not all(isinstance(k, str) and IDENTIFIER.match(k) for k in key)
                or len(set(key)) != len(key)
            ):
                raise _refuse("key", f"A list of 1 to {MAX_KEY_COLUMNS} distinct column names.")
        normal: dict[str, Any] = {"dsn_env": dsn_env, "table": table, "mode": mode}
        if key is not None:
            normal["key"] = list(key)
        return normal

    def shown_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The settings hold a variable's name, not the DSN: shown as they are."""
        return dict(config)

    def sink_key(self, config: dict[str, Any], tenant: str) -> str:
        """One connector per table of one database, whichever variable names it."""
        schema, name = split_table(config["table"])
        dsn = os.environ.get(config["dsn_env"])
        database = (dsn and database_of(dsn)) or config["dsn_env"]
        return f"postgres:{database}:{schema}.{name}"

    def config_schema(self) -> dict[str, Any]:
        """The settings' JSON schema (:mod:`app.transports.postgres_spec`)."""
        return config_schema()

    # -- the sink -------------------------------------------------------------

    def position(self, target: Any) -> int | None:
        """The position the sink database recorded for this connector.

        Raises ``SinkDiverged`` when the table is no longer the one delivered to:
        dropped (and maybe made again: another OID), or emptied by a TRUNCATE
        (a new file, and no row) while the position says changes were delivered.
        A table rewritten with its rows (VACUUM FULL, CLUSTER) is the same table.
        """
        table = _Table(target)
        with table.connect() as conn:
            try:
                exists = conn.execute("SELECT to_regclass(%s)", (table.progress.as_string(conn),))
                if exists.fetchone()[0] is None:  # type: ignore[index]
                    return None
                table.ensure_progress(conn)
                name = table.ident.as_string(conn)
                row = conn.execute(
                    sql.SQL(
                        "SELECT seq, table_oid, table_filenode, to_regclass(%s)::oid, "
                        "pg_relation_filenode(to_regclass(%s)) FROM {} WHERE connector_uid = %s"
                    ).format(table.progress),
                    (name, name, table.uid),
                ).fetchone()
                if row is None:
                    return None
                seq, oid, filenode, oid_now, filenode_now = row
                if oid is not None and oid_now != oid:
                    raise SinkDiverged(
                        f"Sink table {table.shown} was dropped"
                        + ("" if oid_now is None else " and created again")
                        + " outside the service"
                    )
                if filenode is not None and filenode_now != filenode and seq > 0:
                    empty = conn.execute(
                        sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(table.ident)
                    ).fetchone()
                    if empty and empty[0]:
                        raise SinkDiverged(
                            f"Sink table {table.shown} was emptied (TRUNCATE) outside the "
                            f"service, at position {seq}"
                        )
            except psycopg.Error as exc:
                raise table.error(exc, "cannot read the connector's position") from None
        return int(seq)

    def apply(self, target: Any, rows: Sequence[LogRow], *, epoch: int) -> Applied:
        """Apply a batch's net changes and its position in one transaction (see the module)."""
        first, last = rows[0][0], rows[-1][0]
        table = _Table(target)
        weights: Counter[str] = Counter()
        size = 0
        for _seq, weight, text in rows:
            weights[text] += 1 if weight > 0 else -1
            size += len(text.encode("utf-8")) if not text.isascii() else len(text)
        inserted = [text for text, n in weights.items() if n > 0 for _ in range(n)]
        deleted = [(text, -n) for text, n in weights.items() if n < 0]
        with table.connect() as conn:
            try:
                table.ensure_progress(conn)
                with conn.transaction():
                    position = table.lock_position(conn)
                    if position >= last:
                        return Applied(0, None, skipped=True)
                    if position != first - 1:
                        raise SinkMoved(
                            f"Sink table {table.shown} is at position {position}, not {first - 1}",
                            position,
                        )
                    table.delete(conn, deleted)
                    table.check_deadline()
                    table.insert(conn, inserted, table.ident)
                    table.check_deadline()
                    version = table.set_position(conn, last, epoch)
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.errors.UndefinedTable):
                    # Dropped behind this process's back: made again at the next try.
                    _PROGRESS_CURRENT.discard((table.dsn_env, table.schema, table.name, table.mode))
                raise table.error(exc, "cannot apply a batch") from None
        return Applied(size, version)

    def skip_to(self, target: Any, *, held: int, to_seq: int, epoch: int) -> Applied:
        """Record ``to_seq`` as the position, from ``held``, with no changes (a skip)."""
        table = _Table(target)
        with table.connect() as conn:
            try:
                table.ensure_progress(conn)
                with conn.transaction():
                    position = table.lock_position(conn)
                    if position >= to_seq:
                        return Applied(0, None, skipped=True)
                    if position != held:
                        raise SinkMoved(
                            f"Sink table {table.shown} is at position {position}, not {held}",
                            position,
                        )
                    version = table.set_position(conn, to_seq, epoch)
            except psycopg.Error as exc:
                raise table.error(exc, "cannot record a skip") from None
        return Applied(0, version)

    def begin_reset(
        self, target: Any, epoch: int, keep_alive: KeepAlive | None = None
    ) -> PostgresReset:
        """Create the reset's staging table (dropping leftovers of lower epochs).

        Its steps are each bounded by the statement timeout (a third of the
        lease), and the executor renews between them: ``keep_alive`` is not needed.
        """
        return PostgresReset(_Table(target), epoch)
