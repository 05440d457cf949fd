"""Everything that depends on which database engine is in use.

The rest of the code speaks portable SQLAlchemy; SQLite- or PostgreSQL-specific
behaviour (connection pragmas, which errors mean "busy, try again") lives here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import re
import select
import socket
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError

from app.extensions import MIGRATIONS_DIR, db

log = logging.getLogger(__name__)

# PostgreSQL SQLSTATE codes (and classes) after which a retry can succeed.
_PG_TRANSIENT_CLASSES = ("08", "53", "57")
_PG_TRANSIENT_CODES = {"40001", "40P01", "55P03"}
# WAL pages (4 KiB each) between SQLite's automatic checkpoints.
SQLITE_WAL_CHECKPOINT_PAGES = 10_000
_SQLITE_TRANSIENT_MESSAGES = (
    "database is locked",
    "database is busy",
    "database table is locked",
    # SQLITE_PROTOCOL: in WAL mode, a reader lost the race for the wal-index lock too
    # many times in a row while other processes checkpointed or wrote; retry later.
    "locking protocol",
    # The disk is full, or failing: the operator's to fix, not a bug; retry later.
    "database or disk is full",
    "disk i/o error",
)
# PostgreSQL's "disk full" (53100) and SQLite's: see storage_full().
_FULL = ("database or disk is full",)
_PG_FULL = "53100"


def utcnow() -> dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(sa.TypeDecorator):
    """An aware UTC datetime on every engine (SQLite keeps no time zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        """Store UTC; naive values are taken to be UTC already."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        """Return aware UTC datetimes."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def db_time(offset_seconds: float = 0.0) -> sa.ColumnElement[dt.datetime]:
    """The database server's clock (plus ``offset_seconds``), as a SQL expression.

    Leases and retry times are stamped and compared with this, never with a
    process's own clock: every host then agrees on when a lease ran out, even
    one whose clock is off. PostgreSQL: ``clock_timestamp()`` (the real time, not
    the transaction's start). SQLite: ``strftime(..., 'now')``, padded to the
    microsecond digits that SQLAlchemy stores, so stored values and this compare
    correctly as text.
    """
    return _db_time(db.session.get_bind().dialect.name, float(offset_seconds))


@functools.lru_cache(maxsize=256)
def _db_time(dialect: str, offset: float) -> sa.ColumnElement[dt.datetime]:
    """:func:`db_time` of an engine, built once per offset (an expression is immutable).

    Building it cost about 70 us; a lease's take uses it four times, and a
    delivery's statements about ten (``python -m bench`` section c, push latency).
    """
    if dialect == "sqlite":
        expr = sa.func.strftime(
            "%Y-%m-%d %H:%M:%f", "now", f"{offset:+.3f} seconds", type_=sa.String
        ).concat("000")
    else:
        expr = sa.func.clock_timestamp(type_=sa.DateTime(timezone=True))
        if offset:
            expr = expr + sa.func.make_interval(0, 0, 0, 0, 0, 0, offset)
    return sa.type_coerce(expr, UTCDateTime)


def read_db_time() -> dt.datetime:
    """Return the database server's current time (aware UTC)."""
    return db.session.execute(sa.select(db_time())).scalar_one()


def commit_unique(conflict: Exception) -> None:
    """Commit the session; if a unique constraint refuses it, roll back and raise ``conflict``.

    The constraint, not a look-up beforehand, is what decides between two
    requests creating the same name at once.
    """
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise conflict from None


def is_transient_error(exc: BaseException) -> bool:
    """Tell whether a database error means "busy or unreachable, retry later"."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        return sqlstate in _PG_TRANSIENT_CODES or sqlstate[:2] in _PG_TRANSIENT_CLASSES
    message = str(orig).lower()
    if any(text in message for text in _SQLITE_TRANSIENT_MESSAGES):
        return True
    # psycopg raises OperationalError without a SQLSTATE when it cannot connect;
    # SQLite's OperationalError (no such table, ...) is a bug, not a busy server.
    driver = type(orig).__module__.split(".")[0]
    return driver in ("psycopg", "psycopg2") and type(orig).__name__ == "OperationalError"


def storage_full(exc: BaseException) -> bool:
    """Tell whether a database error says its disk is full (SQLite's or PostgreSQL's)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return sqlstate == _PG_FULL or any(text in str(orig).lower() for text in _FULL)


# When this process last saw the database's disk full (time.monotonic()), for /readyz.
_full_at: float | None = None
# Seconds a disk-full error keeps this process unready (unless another comes).
FULL_SECONDS = 30.0


def note_storage_full() -> None:
    """Remember that a write just failed on a full disk (``app.health`` reports it)."""
    global _full_at
    _full_at = time.monotonic()


def storage_full_lately() -> float | None:
    """Seconds since this process saw the disk full, if within ``FULL_SECONDS`` (else None)."""
    if _full_at is None:
        return None
    age = time.monotonic() - _full_at
    return age if age <= FULL_SECONDS else None


def _dialect_insert(table: sa.Table) -> Any:
    """Return the engine's own ``INSERT`` construct (it knows ``ON CONFLICT``)."""
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two engines above are supported
        raise NotImplementedError(f"no INSERT ... ON CONFLICT for {dialect}")
    return insert(table)


def insert_ignoring_duplicates(
    table: sa.Table, values: dict[str, Any], index_elements: list[str]
) -> sa.Insert:
    """Return an ``INSERT`` that does nothing when a row with the same key exists."""
    return (
        _dialect_insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=index_elements)
    )


def insert_adding(table: sa.Table, index_elements: list[str], column: str) -> sa.Insert:
    """Return an ``INSERT`` that, for a row whose key exists, adds to its ``column`` instead.

    ``INSERT ... ON CONFLICT (key) DO UPDATE SET column = column + excluded.column``
    (SQLite and PostgreSQL alike), to be executed with a list of rows: one
    round trip inserts new rows and bumps existing ones.
    """
    insert = _dialect_insert(table)
    return insert.on_conflict_do_update(
        index_elements=index_elements,
        set_={column: table.c[column] + insert.excluded[column]},
    )


# Each statement run by executemany(), compiled once per engine: (SQL, parameter names).
_driver_sql: dict[tuple[sa.Executable, str], tuple[str, tuple[str, ...], bool]] = {}


def tenants_with(column: sa.Column, name: str) -> sa.CTE:
    """The distinct tenants of rows whose ``column`` is set: a skip scan of its index.

    ``column``'s table is indexed on (tenant, column), or partially on tenant
    where the column is set. A recursive query steps from one tenant to the next (one index probe
    each), so its cost grows with the tenants that have such rows, never with
    the rows. The last row's tenant is NULL: callers keep ``tenant IS NOT NULL``.
    """
    table = column.table
    first = sa.select(sa.func.min(table.c.tenant).label("tenant")).where(column.is_not(None))
    tenants = first.cte(name, recursive=True)
    step = table.alias("step")
    after = (
        sa.select(sa.func.min(step.c.tenant))
        .where(step.c[column.name].is_not(None), step.c.tenant > tenants.c.tenant)
        .scalar_subquery()
    )
    return tenants.union_all(sa.select(after).where(tenants.c.tenant.is_not(None)))


def of_each_tenant(
    column: sa.Column, tenants: sa.CTE, aggregate: Callable[[Any], Any], alias: str
) -> sa.ScalarSelect:
    """``aggregate`` (``sa.func.min``, ``max``) of ``column`` over each of ``tenants``' set rows."""
    rows = column.table.alias(alias)
    return (
        sa.select(aggregate(rows.c[column.name]))
        .where(rows.c.tenant == tenants.c.tenant, rows.c[column.name].is_not(None))
        .scalar_subquery()
    )


def executemany(statement: sa.Executable, names: tuple[str, ...], rows: list[tuple]) -> None:
    """Run ``statement`` once per row, in one driver ``executemany``, in the session's transaction.

    ``rows`` hold the values of the statement's bound parameters ``names``, in
    that order. The statement is compiled once per engine and the rows go to
    the driver as they are (tuples for SQLite's ``?``, dicts for psycopg's
    named parameters), with none of SQLAlchemy's per-row processing: for hot
    paths whose values are plain ints and strings.
    """
    connection = db.session.connection()
    dialect = connection.dialect
    entry = _driver_sql.get((statement, dialect.name))
    if entry is None:
        compiled = statement.compile(dialect=dialect)
        order = tuple(compiled.positiontup or ()) if compiled.positional else names
        if set(order) != set(names) or len(order) != len(names):
            raise ValueError(f"{names} are not the parameters of {compiled}")
        entry = _driver_sql[(statement, dialect.name)] = (str(compiled), order, compiled.positional)
    sql, order, positional = entry
    if positional:
        if order != names:
            where = [names.index(name) for name in order]
            rows = [tuple(row[i] for i in where) for row in rows]
        connection.exec_driver_sql(sql, rows)
    else:
        connection.exec_driver_sql(sql, [dict(zip(names, row, strict=True)) for row in rows])


@contextmanager
def snapshot_connection() -> Iterator[sa.Connection]:
    """Yield a connection whose reads all see one moment of the database.

    PostgreSQL: a ``REPEATABLE READ`` transaction. SQLite: an explicit
    ``BEGIN``, because pysqlite otherwise runs each ``SELECT`` in a transaction
    of its own; in WAL mode the first read fixes the snapshot and writers on
    other connections carry on meanwhile. The transaction is rolled back at
    the end: it only reads.
    """
    with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.rollback()


def _sqlite_configurer(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    """Return the connect hook that makes SQLite fit for several processes."""

    def configure(dbapi_connection: Any, _record: Any) -> None:
        """Turn on foreign keys, a busy timeout and WAL."""
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # How long a statement waits for another process's lock before
        # "database is locked" (answered as 503 ServiceUnavailable).
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Ingestion writes Z-set rows at random places of its key index, so a
        # batch dirties hundreds of pages (``make bench``, section b): folding
        # the WAL back every SQLITE_WAL_CHECKPOINT_PAGES pages instead of
        # SQLite's 1,000 syncs the file less often and writes a page rewritten
        # by several batches once.
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_CHECKPOINT_PAGES}")
        cursor.close()

    return configure


def create_private_sqlite_file(database: str | None) -> None:
    """Create a SQLite database file readable by its owner only (0600), if it is missing.

    It holds key hashes and sink settings (URLs with their passwords). SQLite
    would create it 0644 (the umask permitting); made first here, it is 0600,
    and SQLite gives its ``-wal`` and ``-shm`` files the database file's mode.
    An existing file keeps its mode.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def init_app(app: Flask) -> None:
    """Apply the engine-specific connection settings (and create a SQLite file 0600)."""
    with app.app_context():
        engine = db.engine
        if engine.dialect.name == "sqlite":
            create_private_sqlite_file(engine.url.database)
            busy_timeout_ms = int(app.config["SQLITE_BUSY_TIMEOUT_MS"])
            event.listen(engine, "connect", _sqlite_configurer(busy_timeout_ms))
    # Registered after Flask-SQLAlchemy's, so it runs first (teardowns run in reverse).
    app.teardown_appcontext(_remove_session)
    # And at the end of each request: a request that runs inside an app context
    # already pushed (a test's, or a command's) shares that context, and would
    # otherwise carry its session, with the objects it loaded, into the next
    # request, which would read them as they were, not as the database has them.
    app.teardown_request(_remove_session)


def _remove_session(_exc: BaseException | None) -> None:
    """End the context's session; a rollback on a connection the server dropped is no error.

    Flask-SQLAlchemy's own teardown would raise it after the answer was made
    (a PostgreSQL restart), and the server would answer a bare 500 instead.
    """
    try:
        db.session.remove()
    except Exception:
        log.warning("could not end a database session cleanly (the connection was lost)")
        with contextlib.suppress(Exception):
            db.session.registry.clear()


# Alembic's record of the revisions a database is at (its default name; env.py keeps it).
_VERSIONS = sa.table("alembic_version", sa.column("version_num"))
MIGRATE_HINT = "run `make migrate` (or `pipeline-manager db upgrade`)"
# Engines whose schema was seen at the migration head: checked once per process,
# then a set lookup on every /v0 request (the hot path; see bench/README.md).
_schema_ready: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


# A migration script's own revision and the one(s) it builds on, as Alembic writes
# them: `revision = "abc"`, `down_revision = "xyz"` (or None, or a tuple of them).
_REVISION_LINE = re.compile(r"^(revision|down_revision)\b[^=\n]*=(.*)$", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


@functools.cache
def migration_heads(versions: Path = MIGRATIONS_DIR / "versions") -> frozenset[str]:
    """Return the revisions no migration builds on: where ``db upgrade`` leaves a database.

    Read once a process from each script's ``revision`` and ``down_revision``
    lines, not through Alembic, whose import alone would cost a command more
    than its whole run (``python -m bench --cli``); tests/test_schema_check.py
    checks that Alembic finds the same heads.
    """
    revisions: set[str] = set()
    built_on: set[str] = set()
    for script in versions.glob("*.py"):
        for name, value in _REVISION_LINE.findall(script.read_text(encoding="utf-8")):
            (revisions if name == "revision" else built_on).update(_QUOTED.findall(value))
    return frozenset(revisions - built_on)


def schema_problem() -> str | None:
    """Say in one line what is wrong with the database schema, or None if it is at head.

    Compares the database's Alembic revision with the migrations' heads. A
    database with the tables but no revision at all was built from the models
    (``db.create_all()``, as the tests do) and is taken as current. Once a
    database was seen at head, the answer is remembered for the process (a
    schema does not go back), so callers on hot paths pay a set lookup.
    """
    engine = db.engine
    if engine in _schema_ready:
        return None
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        current: set[str] = set()
        if inspector.has_table(_VERSIONS.name):
            current = set(conn.execute(sa.select(_VERSIONS.c.version_num)).scalars())
        built_from_models = not current and inspector.has_table("pipelines")
    if current == migration_heads() or built_from_models:
        _schema_ready.add(engine)
        return None
    if not current:
        return f"The database has no schema yet: {MIGRATE_HINT}"
    return f"The database schema is not the one this code needs: {MIGRATE_HINT}"


def read_outside_transaction(dialect: Dialect, dbapi_connection: Any, on: bool) -> bool:
    """Put a pooled DB-API connection in (``on``) or out of autocommit for one lone read.

    Returns whether anything changed. Only psycopg opens a transaction for a
    ``SELECT``: there a lone read in autocommit saves the ``BEGIN`` and the
    pool's ``ROLLBACK``. pysqlite reads outside a transaction already.
    """
    if dialect.name != "postgresql":
        return False
    if on:
        if dbapi_connection.autocommit:
            return False
        dbapi_connection.autocommit = True
        return True
    dbapi_connection.autocommit = False
    return True


_ALONE = {"isolation_level": "AUTOCOMMIT"}


def begin_alone() -> bool:
    """Begin the session's next transaction as one statement's own; return whether it did.

    For a transaction of a single statement: a lone read, or one conditional
    ``UPDATE`` that is committed right after (a lease taken, renewed or given
    back). On PostgreSQL the statement then runs in autocommit, where it is a
    transaction by itself, as atomic as before: one round trip to the server
    instead of three (``BEGIN``, it, ``COMMIT`` or ``ROLLBACK``); the
    session's ``commit()`` or ``rollback()`` after it sends nothing, and the
    connection goes back to the pool out of autocommit (SQLAlchemy undoes the
    isolation level it set as the connection is checked in). The delivery path is
    made of such steps (``make bench``, section c, push -> line in the file
    sink).

    Nothing changes when a transaction is already open (the statement joins
    it, as it would have), when the session holds changes a flush would write
    first (they stay one transaction), nor on SQLite, where pysqlite opens no
    transaction for a read and its ``BEGIN`` is no round trip. The caller
    runs its statement, then commits or rolls back at once: whatever ran
    before that would be in autocommit too.
    """
    if session_busy():
        return False
    session = db.session()
    if session.get_bind().dialect.name != "postgresql":
        return False
    session.connection(execution_options=_ALONE)
    return True


def session_busy() -> bool:
    """Whether the session has a transaction open, or changes that a flush would write."""
    session = db.session()  # the scoped session's own: it says whether it is in one
    return bool(session.in_transaction() or session.new or session.dirty or session.deleted)


# -- telling workers in other processes that there is work -------------------------------------

WORK_CHANNEL = "pipeline_manager_work"


def notify_work() -> None:
    """Tell the workers of other processes, at commit, that this transaction made work.

    PostgreSQL: a ``NOTIFY``, delivered to every listener when the transaction
    commits (and never if it rolls back). SQLite: nothing here; the commit is
    announced once made (:func:`announce_work`, from ``app.delivery.wake``).
    """
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(sa.text(f"NOTIFY {WORK_CHANNEL}"))


class WorkListener:
    """Waits until another process may have made work, a doorbell rings, or time is up."""

    def wait(self, timeout: float, doorbell: int) -> bool:
        """Wait up to ``timeout`` seconds; return whether something (not the clock) woke it."""
        raise NotImplementedError

    def close(self) -> None:
        """Give the listener's connection back."""


class _PostgresListener(WorkListener):
    """``LISTEN`` on a connection of its own, waited on with ``select`` beside the doorbell."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.raw: Any = None
        self.broken = False

    def _connect(self) -> Any:
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            driver.autocommit = True
            driver.execute(f"LISTEN {WORK_CHANNEL}")
        except Exception:
            raw.invalidate()
            raise
        self.raw = raw
        if self.broken:
            log.info("work listener connected again")
            self.broken = False
        return driver

    def wait(self, timeout: float, doorbell: int) -> bool:
        """Wait for a notification or the doorbell; a lost connection counts as a wake."""
        try:
            driver = self.raw.driver_connection if self.raw is not None else self._connect()
            ready, _, _ = select.select([driver.fileno(), doorbell], [], [], max(0.0, timeout))
            if driver.fileno() in ready:
                # Drain what came: one look for work answers them all.
                for _notice in driver.notifies(timeout=0):
                    pass
            return bool(ready)
        except Exception as exc:  # the server restarted, the network dropped...
            if not self.broken:  # said once per outage, not at every try
                log.warning("work listener lost its connection (%s)", type(exc).__name__)
            self.broken = True
            self.close()
            # Notifications may have been missed meanwhile: look for work once after.
            time.sleep(max(0.0, timeout))
            return True

    def close(self) -> None:
        """Drop the listening connection (it is not given back to the pool in LISTEN state)."""
        if self.raw is not None:
            with contextlib.suppress(Exception):
                self.raw.invalidate()
            self.raw = None


def _sqlite_wake_folder(engine: sa.Engine) -> str | None:
    """The folder where a SQLite database's workers listen for wake-ups (None: in memory).

    One per database file and user, in the temporary folder (Unix socket paths
    are short), made private to the user.
    """
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    digest = hashlib.sha256(os.path.abspath(database).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"pipeline-manager-{os.getuid()}-{digest}")


def announce_work(engine: sa.Engine) -> None:
    """After a commit that made work: wake the workers of other processes, on SQLite.

    Every listener of the database has a datagram socket in its wake folder;
    each gets one byte (a full socket is awake already). A socket whose
    process is gone is removed. PostgreSQL needs none of this (``NOTIFY``).
    """
    if engine.dialect.name != "sqlite":
        return
    folder = _sqlite_wake_folder(engine)
    if folder is None:
        return
    try:
        names = os.listdir(folder)
    except OSError:
        return  # no worker listens
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            path = os.path.join(folder, name)
            try:
                sender.sendto(b"!", path)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:  # full (awake already), or not a socket
                pass


class _SQLiteListener(WorkListener):
    """A datagram socket other processes' commits write to, and ``PRAGMA data_version``.

    Processes of this service announce their commits that make work
    (:func:`announce_work`): the wait ends at once, at no cost while idle.
    ``PRAGMA data_version``, which moves when another connection commits, is
    also read every ``check_seconds``, for commits that announce nothing.
    """

    def __init__(self, engine: sa.Engine, check_seconds: float) -> None:
        self.raw = engine.raw_connection()
        self.check = max(0.001, float(check_seconds))
        self.version = self._version()
        self.socket: socket.socket | None = None
        self.path: str | None = None
        folder = _sqlite_wake_folder(engine)
        if folder is not None:
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
                self.path = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
                self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.socket.bind(self.path)
                self.socket.setblocking(False)
            except OSError as exc:
                log.warning("no wake-up socket (%s); checking every %s s", exc, self.check)
                self.socket = None

    def _version(self) -> int:
        return int(self.raw.driver_connection.execute("PRAGMA data_version").fetchone()[0])

    def wait(self, timeout: float, doorbell: int) -> bool:
        """Wait on the socket and the doorbell, reading the version between waits."""
        deadline = time.monotonic() + max(0.0, timeout)
        sources = [doorbell] if self.socket is None else [doorbell, self.socket.fileno()]
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select(sources, [], [], max(0.0, min(self.check, left)))
            if ready:
                if self.socket is not None and self.socket.fileno() in ready:
                    with contextlib.suppress(OSError):
                        while self.socket.recv(64):
                            pass
                return True
            try:
                version = self._version()
            except Exception as exc:
                log.warning("work listener could not read the database (%s)", type(exc).__name__)
                return True
            if version != self.version:
                self.version = version
                return True
            if left <= self.check:
                return False

    def close(self) -> None:
        """Remove the socket; give the connection back to the pool."""
        if self.socket is not None and self.path is not None:
            self.socket.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
                os.rmdir(os.path.dirname(self.path))  # only if no other listener is left
        with contextlib.suppress(Exception):
            self.raw.close()


def work_listener(engine: sa.Engine, check_seconds: float) -> WorkListener:
    """A listener for work made by other processes, for this engine."""
    if engine.dialect.name == "postgresql":
        return _PostgresListener(engine)
    return _SQLiteListener(engine, check_seconds)
