"""Section f: table sinks. Stream delivery and snapshot replay into PostgreSQL and Delta tables.

Each transport gets a pipeline of its own with one connector, on one app (the
run's database), and is measured alone through the real worker: the changes
of ``records`` pushed inserts delivered as a stream, then a reset replaying the
same records as a snapshot. A file connector measured the same way in the same
run is the baseline (the ratio column says how the table sink compares).

The ``delta`` transport is measured twice: a change table of JSON records, and
one of declared typed columns (``delta-typed``: ``id`` long, ``customer``
string, ``amount`` double), whose records are converted as they land.

PostgreSQL needs a sink database: ``--sink-dsn`` (or ``BENCH_SINK_DSN``); the
``postgres`` rows are skipped without one. The sink table is created in a
schema of its own and dropped afterwards.

Run alone: ``python -m bench.tables [--records 100000] [--sink-dsn DSN]``
(SQLite service database).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import Row
from bench.service import VIEW, Service, change_bodies

ENV_NAME = "SINK_DSN_BENCH"
# The fields of bench.service.change_bodies' records, as a delta table's typed columns.
DELTA_COLUMNS = {"id": "long", "customer": "string", "amount": "double"}


def _transports(service: Service, schema: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each sink measured: its name in the results -> its transport and settings."""
    from app.transports import TRANSPORTS

    found: dict[str, tuple[str, dict[str, Any]]] = {
        "file": ("file", {"path": "tables-bench/file.jsonl"})
    }
    if "postgres" in TRANSPORTS and os.environ.get(ENV_NAME):
        found["postgres"] = ("postgres", {"dsn_env": ENV_NAME, "table": f"{schema}.totals"})
    if "delta" in TRANSPORTS:
        found["delta"] = ("delta", {"path": "tables-bench/delta"})
        typed = {"path": "tables-bench/delta-typed", "columns": DELTA_COLUMNS}
        found["delta-typed"] = ("delta", typed)
    return found


def _sink_sql(dsn: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def _measure(
    service: Service, name: str, transport: str, config: dict[str, Any], records: int, batch: int
) -> tuple[float, float, dict[str, Any]]:
    """Seconds to deliver ``records`` pushed inserts, then to replay them; the reset's status."""
    pipeline = f"tables-{name}"
    base = f"/v0/pipelines/{pipeline}"
    service.call("POST", "/v0/pipelines", (201,), json={"name": pipeline, "views": [VIEW]})
    connector = {"name": "sink", "transport": {"name": transport, "config": config}}
    service.call("POST", f"{base}/views/{VIEW}/connectors", (201,), json=connector)
    service.call("POST", f"{base}/start", (200, 202))
    service.run_worker_until_idle()
    for body in change_bodies(0, records, batch):
        service.call(
            "POST",
            f"{base}/views/{VIEW}/changes",
            (200,),
            data=body,
            content_type="application/json",
        )
    started = time.perf_counter()
    service.run_worker_until_idle()
    deliver = time.perf_counter() - started
    token = service.call("POST", f"{base}/views/{VIEW}/connectors/sink/reset", (202,)).get_json()[
        "token"
    ]
    started = time.perf_counter()
    service.run_worker_until_idle()
    replay = time.perf_counter() - started
    status = service.call("GET", f"{base}/reset_status?token={token}", (200,)).get_json()
    if status["status"] != "complete" or status["replayed_records"] != records:
        raise RuntimeError(f"{name}: the reset did not replay {records} records: {status}")
    service.call("POST", f"{base}/stop", (200, 202))
    return deliver, replay, status


def _ratio_note(name: str) -> Callable[[float, float], str]:
    """How a table sink's time compares with the file sink's (nothing for the file sink)."""

    def note(seconds: float, file_seconds: float) -> str:
        return "" if name == "file" else f"; {file_seconds / seconds:.2f}x the file sink's rate"

    return note


def section_tables(
    workdir: Path, database_url: str | None, records: int, sink_dsn: str | None
) -> list[Row] | str:
    """Section f: delivery and replay rates into each table sink, against a file sink."""
    if records <= 0:
        return "skipped (--table-records 0)"
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    dsn = sink_dsn
    if dsn:
        os.environ[ENV_NAME] = dsn  # what the connector's dsn_env names
    if dsn:
        _sink_sql(dsn, f'CREATE SCHEMA "{schema}"')
        _sink_sql(dsn, f'CREATE TABLE "{schema}".totals (id bigint, customer text, amount numeric)')
    service = Service(workdir, database_url, name="tables")
    rows: list[Row] = []
    try:
        measured: dict[str, tuple[float, float, dict[str, Any]]] = {}
        for name, (transport, config) in _transports(service, schema).items():
            measured[name] = _measure(service, name, transport, config, records, 1000)
        file_deliver, file_replay, _ = measured["file"]
        for name, (deliver, replay, _status) in measured.items():
            ratio = _ratio_note(name)
            rows.append(
                Row(
                    "f",
                    f"table sinks: stream delivery to a {name} sink"
                    + (" (the section's baseline)" if name == "file" else ""),
                    records / deliver,
                    "records/s",
                    f"{deliver:.2f}s{ratio(deliver, file_deliver)}",
                )
            )
            rows.append(
                Row(
                    "f",
                    f"table sinks: reset, snapshot replay to a {name} sink, one commit"
                    if name != "file"
                    else "table sinks: reset, snapshot replay to a file sink (the baseline)",
                    records / replay,
                    "records/s",
                    f"{replay:.2f}s{ratio(replay, file_replay)}",
                )
            )
        if "postgres" not in measured:
            # No figure to show: said beside the baseline instead.
            rows[0].note += "; postgres sink skipped (no --sink-dsn or BENCH_SINK_DSN)"
    finally:
        service.close()
        if dsn:
            _sink_sql(dsn, f'DROP SCHEMA "{schema}" CASCADE')
    return rows


def main() -> None:
    """Section f alone, on a SQLite service database in a temporary folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--sink-dsn", default=os.environ.get("BENCH_SINK_DSN"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = section_tables(Path(folder), None, args.records, args.sink_dsn)
    if isinstance(rows, str):
        print(f"section f: {rows}")
        return
    for row in rows:
        print(f"{row.measure}: {row.value:,.0f} {row.unit} ({row.note})")


if __name__ == "__main__":
    main()
