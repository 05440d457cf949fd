"""Big tables built fast: ``INSERT ... SELECT`` over a generated series, not one call per row.

Rows are made by the database itself from a row number ``n`` (SQLite: a
recursive CTE; PostgreSQL: ``generate_series``), in chunks of a million rows
per transaction. Every value satisfies the models' constraints, and the
columns each insert names are checked against the table: a NOT NULL column
without a server default that an insert leaves out fails the build with its
name, rather than with an engine error halfway through.

- :func:`fill_view`: a view's Z-set and change log with ``records`` distinct
  records (canonical JSON text, key = SHA-256 of the text, as
  ``app.view_data.store`` has them), for the memory measurements.
- :func:`build_scale`: pipelines (running, one view with one file connector
  each), their resets (complete), and a long change log not delivered yet
  (insert/delete pairs, so the Z-set is unchanged), for the scale run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass

import sqlalchemy as sa

from app.database import UTCDateTime
from app.extensions import db
from bench.service import Service

CHUNK = 1_000_000
# Bulk ids (UUIDs made from a row number) start here, far from random uuid4s.
UUID_BASE = 0xB0_0000_0000


class Sql:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"

    def series(self, table: str, columns: list[str], values: list[str], order: str = "") -> str:
        """``INSERT INTO table (columns) SELECT values`` over rows ``s.x`` = 1..:count.

        ``order`` (``ORDER BY ...``) sorts the rows first: inserting in index order
        is much faster than in random order (hash keys).
        """
        # Table, columns and expressions are the bench's own; values are bound.
        head = f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)}"
        if self.postgres:
            return f"{head} FROM generate_series(1, :count) AS s(x) {order}"
        series = "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < :count)"
        return f"{series} {head} FROM s {order}"

    def uuid(self, number: str) -> str:
        """A UUID made from an integer expression, as the column type stores it."""
        if self.postgres:
            return f"CAST(lpad(to_hex({number}), 32, '0') AS uuid)"
        return f"printf('%032x', {number})"

    def sha256(self, text: str) -> str:
        """The hex SHA-256 of a text expression's UTF-8 bytes."""
        if self.postgres:
            return f"encode(sha256(convert_to({text}, 'UTF8')), 'hex')"
        return f"bench_sha256({text})"

    def json(self, text: str) -> str:
        """A JSON column's value from a text expression."""
        return f"CAST({text} AS json)" if self.postgres else text

    @staticmethod
    def text(number: str) -> str:
        """An integer expression as text."""
        return f"CAST({number} AS TEXT)"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_columns(table: str, columns: list[str]) -> None:
    """Raise if the insert leaves out a NOT NULL column that has no server default."""
    missing = [
        column.name
        for column in db.metadata.tables[table].columns
        if not column.nullable
        and column.server_default is None
        and column.name not in columns
        and not (column.primary_key and column.autoincrement is True)
    ]
    if missing:
        raise RuntimeError(f"the bulk insert into {table} leaves out NOT NULL {missing}")


def insert_rows(
    conn: sa.Connection,
    sql: Sql,
    table: str,
    values: dict[str, str],
    count: int,
    order: str = "",
    **params: object,
) -> None:
    """Insert ``count`` rows; each value is an SQL expression of the row number ``{n}``."""
    columns = list(values)
    _check_columns(table, columns)
    exprs = [expr.replace("{n}", "(s.x + :base)") for expr in values.values()]
    statement = sa.text(sql.series(table, columns, exprs, order))
    if ":now" in statement.text:
        statement = statement.bindparams(sa.bindparam("now", type_=UTCDateTime()))
        params["now"] = dt.datetime.now(dt.UTC)
    for base in range(0, count, CHUNK):
        conn.execute(statement, {"count": min(CHUNK, count - base), "base": base, **params})
        conn.commit()


def connect(service: Service) -> tuple[sa.Connection, Sql]:
    """Open a connection to the service's database (SQLite: with ``bench_sha256``)."""
    with service.app.app_context():
        engine = db.engine
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.connection.driver_connection.create_function(
            "bench_sha256", 1, _sha256, deterministic=True
        )
    return conn, Sql(engine.dialect.name)


def _record(n: str) -> str:
    """The SQL text of a filled view's record number ``n``: about 60 bytes of canonical JSON."""
    return (
        "'{\"amount\":' || "
        + Sql.text(f"{n} % 10000")
        + ' || \',"customer":"c\' || '
        + Sql.text(f"{n} % 997")
        + ' || \'","id":\' || '
        + Sql.text(n)
        + " || '}'"
    )


def fill_view(service: Service, view_id: int, records: int) -> float:
    """Give an empty view ``records`` distinct records, in its Z-set and its change log.

    Return the seconds taken. The log holds one insert per record (seqs 1..N),
    so a connector at ``delivered_seq`` 0 has all of them to deliver.
    """
    started = time.perf_counter()
    conn, sql = connect(service)
    try:
        record = _record("{n}")
        insert_rows(
            conn,
            sql,
            "view_records",
            {
                "view_id": ":view",
                "key": sql.sha256(record),
                "record": record,
                "weight": "1",
            },
            records,
            order="ORDER BY 2",
            view=view_id,
        )
        insert_rows(
            conn,
            sql,
            "view_changes",
            {"view_id": ":view", "seq": "{n}", "weight": "1", "record": record},
            records,
            view=view_id,
        )
        set_log_end(conn, view_id, records, added=records)
        conn.commit()
    finally:
        conn.close()
    return time.perf_counter() - started


def set_log_end(conn: sa.Connection, view_id: int, last_seq: int, added: int = 0) -> None:
    """Set a view's log head (``view_logs.last_seq``), creating its row if needed.

    ``added`` records were put in the view's Z-set: its size (``view_logs.records``,
    which a snapshot reports) grows by as many.
    """
    params = {"seq": last_seq, "view": view_id, "added": added}
    updated = conn.execute(
        sa.text(
            "UPDATE view_logs SET last_seq = :seq, records = records + :added WHERE view_id = :view"
        ),
        params,
    )
    if updated.rowcount == 0:
        conn.execute(
            sa.text(
                "INSERT INTO view_logs (view_id, last_seq, records) VALUES (:view, :seq, :added)"
            ),
            params,
        )
    # The view's connectors have work now, as after a push (app.delivery.due.mark_view).
    now = sa.bindparam("now", dt.datetime.now(dt.UTC), type_=UTCDateTime())
    conn.execute(
        sa.text(
            "UPDATE connectors SET due_at = :now, wakes = wakes + 1 WHERE view_id = :view"
        ).bindparams(now),
        {"view": view_id},
    )


@dataclass
class ScaleCounts:
    """What :func:`build_scale` added."""

    pipelines: int
    resets: int
    changes: int
    seconds: float


def build_scale(
    service: Service, pipelines: int, resets: int, changes: int, log_view_id: int
) -> ScaleCounts:
    """Add ``pipelines`` pipelines with their views and connectors, resets, and a change log.

    Each new pipeline is running (incarnation 1) with one view ``totals`` and
    one file connector, in sync, its log empty; ``resets`` are spread evenly
    over them, all complete. ``changes`` rows are appended to the change log
    of the view ``log_view_id`` (which must have an empty log), as pushes its
    connector has yet to deliver: insert/delete pairs of one record (rounded
    down to an even number), so the view's Z-set is unchanged.
    """
    started = time.perf_counter()
    changes = changes // 2 * 2
    conn, sql = connect(service)
    try:
        view_base = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM views")).scalar_one()
        conn_base = conn.execute(
            sa.text("SELECT coalesce(max(id), 0) FROM connectors")
        ).scalar_one()
        conn.commit()
        common = {"ubase": UUID_BASE, "vbase": view_base, "cbase": conn_base}
        insert_rows(
            conn,
            sql,
            "pipelines",
            {
                "id": sql.uuid(":ubase + {n}"),
                "tenant": "'default'",
                "name": "'bulk-' || " + sql.text("{n}"),
                "description": "''",
                "status": "'running'",
                "incarnation": "1",
                "created_at": ":now",
                "status_since": ":now",
            },
            pipelines,
            **common,
        )
        insert_rows(
            conn,
            sql,
            "views",
            {
                "id": ":vbase + {n}",
                "pipeline_id": sql.uuid(":ubase + {n}"),
                "name": "'totals'",
                "position": "0",
            },
            pipelines,
            **common,
        )
        path = "'bulk-' || " + sql.text("{n}") + " || '.jsonl'"
        insert_rows(
            conn,
            sql,
            "connectors",
            {
                "id": ":cbase + {n}",
                "uid": sql.uuid(":ubase + {n}"),
                "view_id": ":vbase + {n}",
                "tenant": "'default'",
                "name": "'sink'",
                "transport": "'file'",
                "config": sql.json('\'{"path":"\' || ' + path + " || '\"}'"),
                "sink_key": "'default/' || " + path,
                "sync_state": "'in_sync'",
                "created_at": ":now",
            },
            pipelines,
            **common,
        )
        insert_rows(
            conn,
            sql,
            "view_logs",
            {"view_id": ":vbase + {n}", "last_seq": "0"},
            pipelines,
            **common,
        )
        owner = "1 + ({n} - 1) % :pipelines"
        insert_rows(
            conn,
            sql,
            "resets",
            {
                "id": sql.uuid(":ubase + {n}"),
                "pipeline_id": sql.uuid(f":ubase + {owner}"),
                "connector_id": f":cbase + {owner}",
                "incarnation": "1",
                "status": "'complete'",
                "phase": "'done'",
                "token": "'bulk'",
                "snapshot_records": "0",
                "replayed_records": "0",
                "requested_at": ":now",
                "started_at": ":now",
                "completed_at": ":now",
                "attempts": "1",
            },
            resets,
            pipelines=pipelines,
            **common,
        )
        # Odd seqs insert record (n+1)/2, even seqs delete it again.
        insert_rows(
            conn,
            sql,
            "view_changes",
            {
                "view_id": ":view",
                "seq": "{n}",
                "weight": "CASE WHEN {n} % 2 = 1 THEN 1 ELSE -1 END",
                "record": "'{\"id\":' || " + sql.text("({n} + 1) / 2") + ' || \',"note":"bulk"}\'',
            },
            changes,
            view=log_view_id,
        )
        set_log_end(conn, log_view_id, changes)
        conn.commit()
        if sql.postgres:
            for table in ("views", "connectors"):
                setval = f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id))"
                conn.execute(sa.text(f"{setval} FROM {table}"))
            conn.commit()
            # What autovacuum would do soon after such a load.
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    finally:
        conn.close()
    return ScaleCounts(pipelines, resets, changes, time.perf_counter() - started)
