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

The connection comes from the engine's pool and goes back to it at once
(the pool rolls back what the read began). Use it for single-statement reads
only; anything that writes, or needs the request's session, uses the session.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
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
    results: tuple[Callable[[Any], Any] | None, ...]
    # The columns that have a result processor, with it (most have none).
    processed: tuple[tuple[int, Callable[[Any], Any]], ...] = field(init=False)

    def __post_init__(self) -> None:
        processed = tuple((i, p) for i, p in enumerate(self.results) if p is not None)
        object.__setattr__(self, "processed", processed)


class PreparedSelect:
    """A ``SELECT`` compiled once per dialect and run on a raw pooled connection."""

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
            plan = _Plan(compiled.string, positional, binds, results)
            self._plans[dialect] = plan
        return plan

    def first(self, engine: sa.Engine, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run the statement with ``params``; return its first row as a tuple, or None."""
        dialect = engine.dialect
        plan = self._plan(dialect)
        values = {}
        for name, process in plan.binds.items():
            value = params[name]
            values[name] = process(value) if process is not None else value
        args: Any = (
            tuple(values[name] for name in plan.positional)
            if plan.positional is not None
            else values
        )
        for listener in statement_listeners:
            listener(plan.sql, args)
        connection = cursor = None
        outside = False
        try:
            connection = engine.raw_connection()
            # A lone read needs no transaction: where the driver would open one
            # (psycopg), it is read in autocommit, saving the BEGIN and the
            # pool's ROLLBACK, two round trips to the server.
            outside = read_outside_transaction(dialect, connection.dbapi_connection, True)
            cursor = connection.cursor()
            cursor.execute(plan.sql, args)
            row = cursor.fetchone()
        except dialect.loaded_dbapi.Error as exc:
            dead = connection is not None and dialect.is_disconnect(
                exc, connection.dbapi_connection, cursor
            )
            if dead:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                plan.sql,
                args,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=dead,
                dialect=dialect,
            ) from exc
        finally:
            if cursor is not None:
                with contextlib.suppress(dialect.loaded_dbapi.Error):
                    cursor.close()
            if outside and connection.dbapi_connection is not None:
                try:
                    read_outside_transaction(dialect, connection.dbapi_connection, False)
                except Exception as exc:
                    # Never give the pool back a connection left in autocommit.
                    connection.invalidate(exc)
            if connection is not None:
                connection.close()
        if row is None:
            return None
        values = list(row)
        for index, process in plan.processed:
            values[index] = process(values[index])
        return tuple(values)
