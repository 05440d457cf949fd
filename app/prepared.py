"""Hot-path reads: a Core ``SELECT`` run straight on a pooled DB-API connection.

Executing a statement through SQLAlchemy costs about 40 µs of Python on top
of the database's own work (cache key, execution context, result object),
several times what SQLite takes to answer a primary-key lookup. For the few
reads that every poller makes (``reset_status``), :class:`PreparedSelect`
keeps the statement in SQLAlchemy (written once, portable, compiled by the
engine's dialect) and runs the compiled text on the DB-API cursor itself:

- the statement is compiled once per dialect;
- parameters go through their bound types' processors and rows through the
  selected columns' processors (public ``TypeEngine`` hooks), so values come
  out as a SQLAlchemy result would give them (UUIDs, aware datetimes...);
- DB-API errors are raised as SQLAlchemy's (``OperationalError``...), so the
  "database busy" answer (503) is the same, and a connection found dead is
  invalidated in the pool as SQLAlchemy would.

:meth:`PreparedSelect.first` takes a connection from the engine's pool and
gives it back at once, for single-statement reads; :meth:`PreparedSelect.all`
runs in a connection's open transaction (a snapshot's pages). Anything that
writes, or needs the request's session, uses the session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

from app.database import read_outside_transaction

# Called with (SQL, parameters) before each statement runs. These statements
# bypass SQLAlchemy's engine events, so tools that count statements (the tests,
# the benchmark) listen here as well.
statement_listeners: list[Callable[[str, Any], None]] = []


@dataclass(frozen=True)
class _Plan:
    """A statement compiled for one dialect, with its value processors."""

    sql: str
    positional: tuple[str, ...] | None  # parameter names in order, for positional paramstyles
    binds: dict[str, Callable[[Any], Any] | None]
    # Values the compiler bound itself (SQLite's ``OFFSET ?`` after a ``LIMIT``).
    defaults: dict[str, Any]
    results: tuple[Callable[[Any], Any] | None, ...]
    # The columns that have a result processor, with it (most have none).
    processed: tuple[tuple[int, Callable[[Any], Any]], ...] = field(init=False)

    def __post_init__(self) -> None:
        processed = tuple((i, p) for i, p in enumerate(self.results) if p is not None)
        object.__setattr__(self, "processed", processed)

    def args(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters: ``params`` (or the compiler's own values), processed."""
        names = self.positional if self.positional is not None else self.binds
        values = []
        for name in names:
            value = params[name] if name in params else self.defaults[name]
            process = self.binds.get(name)
            values.append(value if process is None else process(value))
        if self.positional is not None:
            return tuple(values)
        return dict(zip(names, values, strict=True))

    def row(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """A driver row with its columns' result processors applied."""
        if not self.processed:
            return tuple(row)
        values = list(row)
        for index, process in self.processed:
            values[index] = process(values[index])
        return tuple(values)


class PreparedSelect:
    """A ``SELECT`` compiled once per dialect and run on a DB-API cursor."""

    def __init__(self, statement: sa.Select) -> None:
        self.statement = statement
        self._plans: dict[Dialect, _Plan] = {}

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect)
        if plan is None:
            compiled = self.statement.compile(dialect=dialect)
            binds = {
                name: bind.type.dialect_impl(dialect).bind_processor(dialect)
                for name, bind in compiled.binds.items()
            }
            results = tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in self.statement.selected_columns
            )
            positional = tuple(compiled.positiontup or ()) if compiled.positional else None
            plan = _Plan(compiled.string, positional, binds, dict(compiled.params), results)
            self._plans[dialect] = plan
        return plan

    @staticmethod
    @contextlib.contextmanager
    def _translated(
        dialect: Dialect,
        plan: _Plan,
        args: Any,
        dbapi_connection: Any,
        invalidate: Callable[[BaseException], None],
    ) -> Iterator[None]:
        """Raise driver errors as SQLAlchemy's; a dead connection goes to ``invalidate`` first."""
        try:
            yield
        except dialect.loaded_dbapi.Error as exc:
            # Neither driver's dialect reads the cursor to tell a dead connection.
            dead = dialect.is_disconnect(exc, dbapi_connection, None)
            if dead:
                invalidate(exc)
            raise DBAPIError.instance(
                plan.sql,
                args,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=dead,
                dialect=dialect,
            ) from exc

    @classmethod
    def _run(
        cls,
        dialect: Dialect,
        plan: _Plan,
        args: Any,
        dbapi_connection: Any,
        invalidate: Callable[[BaseException], None],
        fetch: Callable[[Any], Any],
    ) -> Any:
        """Execute on a cursor of ``dbapi_connection``; return ``fetch(cursor)``.

        Driver errors are raised as SQLAlchemy's; a connection they show dead
        is handed to ``invalidate`` first.
        """
        for listener in statement_listeners:
            listener(plan.sql, args)
        cursor = None
        try:
            with cls._translated(dialect, plan, args, dbapi_connection, invalidate):
                cursor = dbapi_connection.cursor()
                cursor.execute(plan.sql, args)
                return fetch(cursor)
        finally:
            if cursor is not None:
                with contextlib.suppress(dialect.loaded_dbapi.Error):
                    cursor.close()

    def first(self, engine: sa.Engine, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run the statement on a pooled connection of its own; return its first row, or None."""
        dialect = engine.dialect
        plan = self._plan(dialect)
        args = plan.args(params)
        try:
            connection = engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                plan.sql, args, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc
        outside = False
        try:
            # A lone read needs no transaction: where the driver would open one
            # (psycopg), it is read in autocommit, saving the BEGIN and the
            # pool's ROLLBACK, two round trips to the server.
            outside = read_outside_transaction(dialect, connection.dbapi_connection, True)
            row = self._run(
                dialect,
                plan,
                args,
                connection.dbapi_connection,
                connection.invalidate,
                lambda cursor: cursor.fetchone(),
            )
        finally:
            if outside and connection.dbapi_connection is not None:
                try:
                    read_outside_transaction(dialect, connection.dbapi_connection, False)
                except Exception as exc:
                    # Never give the pool back a connection left in autocommit.
                    connection.invalidate(exc)
            connection.close()
        return None if row is None else plan.row(row)

    def all(self, conn: sa.Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run the statement in ``conn``'s transaction; return all its rows as tuples."""
        dialect = conn.dialect
        plan = self._plan(dialect)
        rows = self._run(
            dialect,
            plan,
            plan.args(params),
            conn.connection.dbapi_connection,
            conn.invalidate,
            lambda cursor: cursor.fetchall(),
        )
        if not plan.processed:
            return rows
        return [plan.row(row) for row in rows]

    @contextlib.contextmanager
    def stream(
        self, conn: sa.Connection, params: Mapping[str, Any], name: str
    ) -> Iterator[Callable[[int], list[tuple[Any, ...]]]]:
        """Run the statement in ``conn``'s transaction through a server-side cursor ``name``.

        PostgreSQL (``DECLARE``, then ``FETCH``): yields ``fetch(n)``, the next
        ``n`` rows as tuples (fewer at the end), so a caller reads a large
        result a page at a time. The cursor is closed on the way out.
        """
        dialect = conn.dialect
        plan = self._plan(dialect)
        args = plan.args(params)
        dbapi_connection = conn.connection.dbapi_connection

        def translated() -> contextlib.AbstractContextManager[None]:
            return self._translated(dialect, plan, args, dbapi_connection, conn.invalidate)

        for listener in statement_listeners:
            listener(plan.sql, args)
        with translated():
            cursor = dbapi_connection.cursor(name=name)
        try:
            with translated():
                cursor.execute(plan.sql, args)

            def fetch(size: int) -> list[tuple[Any, ...]]:
                with translated():
                    rows = cursor.fetchmany(size)
                return [plan.row(row) for row in rows] if plan.processed else rows

            yield fetch
        finally:
            with contextlib.suppress(dialect.loaded_dbapi.Error):
                cursor.close()
