"""The benchmark run: measure, then print one table.

Sections:

a. ``GET reset_status`` through the Flask test client, against two baselines
   measured in the same run (a bare Flask app answering ``{}``, and a no-op
   route of the real app), interleaved in rounds so that machine noise hits
   all three alike; plus the SQL statements one request runs.
b. View data: ingestion records/s (``POST .../changes``), delivery of the
   stream to a file sink, and the replay of a reset's snapshot; skipped with a
   note while the app has no changes endpoint.
   Each is also shown against a raw baseline measured next to it (plain
   ``sqlite3`` ``executemany`` of the same rows; the same lines written to a
   file), and the change log's size is read once everything is delivered.
c. The service as users run it (:mod:`bench.served_small`): the real gunicorn
   with the project's ``gunicorn.conf.py`` and its delivery process, on a small
   database: reset_status and /healthz with wrk against the bare Flask app
   (``--no-wrk`` skips those), push-to-sink latency, ingestion from one and
   several clients, delivery, and a reset to complete, each against a
   baseline of the same run.
d. ``--memory``: peak RSS of delivery and of replay at two view sizes, each in
   a process of its own (:mod:`bench.memory`).
f. Table sinks: stream delivery and snapshot replay into a PostgreSQL table
   (with ``--sink-dsn``) and a Delta table, against a file sink measured the
   same way in the same run (:mod:`bench.tables`).
g. ``--scale`` (alone): the service under gunicorn at 100,000 connectors
   against a small database (:mod:`bench.served_scale`): idle CPU, reset_status,
   push latency, tenant fairness, /metrics, and on PostgreSQL delivery with 1,
   2 and 4 delivery processes.
h. The command line: how soon ``pipeline-manager --help`` and
   ``pipeline-manager api-keys list`` answer, each a fresh process, against
   ``python -c pass`` in the same rounds (:mod:`bench.cli_speed`); ``--cli``
   runs it alone.
e. ``--scale --in-process`` (alone): reset_status, ingestion, delivery and the
   change log's size on a big database built with bulk SQL, in process,
   against a small one measured in the same run (:mod:`bench.scale`).

``--database-url`` measures on PostgreSQL instead of SQLite files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench import baselines
from bench.cli_speed import section_cli_speed
from bench.measure import PartialFailure, Row, compare, statements_per_request
from bench.memory import section_memory
from bench.plain_app import create_plain_app
from bench.scale import section_scale
from bench.served_scale import section_served_scale
from bench.served_small import section_served
from bench.service import (
    CHANGES_RULE,
    HEALTH_PATH,
    NOOP_PATH,
    PIPELINE,
    VIEW,
    Service,
    change_bodies,
    log_note,
)
from bench.tables import section_tables

# The targets of issue 10, shown beside the measured figure.
TARGETS = {
    "reset_status": " (target <= 2.5x)",
    "ingestion": " (target >= 60,000 records/s)",
    "delivery": " (target >= 250,000 records/s)",
    "replay": " (target >= 250,000 records/s)",
}


def section_reset_status(
    service: Service, seconds: float, rounds: int
) -> tuple[list[Row], list[str]]:
    """Section a: reset_status against the baselines, and its SQL statements."""
    plain = create_plain_app().test_client()
    client = service.client
    # Name -> (what it is, the call); the first is the baseline the others are compared to.
    targets: dict[str, tuple[str, Callable[[], Any]]] = {
        "plain": ("plain Flask app, GET / -> {} (baseline)", lambda: plain.get("/")),
        "noop": ("the app's no-op route (its hooks, no DB)", lambda: client.get(NOOP_PATH)),
    }
    if service.has_rule(HEALTH_PATH):
        targets["health"] = (
            "GET /healthz (a route of the app, one SELECT 1)",
            lambda: client.get(HEALTH_PATH),
        )
    auth = "API key" if service.api_key else "no credentials checked"
    path = service.status_path()
    targets["reset_status"] = (f"GET reset_status ({auth})", lambda: client.get(path))
    for name in ("noop", "health", "reset_status"):
        if name in targets:
            check = targets[name][1]()
            if check.status_code != 200:
                raise RuntimeError(f"{name} answered {check.status_code}: {check.get_data()}")

    medians = compare({name: call for name, (_, call) in targets.items()}, seconds, rounds)
    base = medians["plain"]
    rows = [Row("a", targets["plain"][0], 1 / base, "req/s", "1.00x the baseline's time")]
    for name, (label, _) in list(targets.items())[1:]:
        rows.append(
            Row(
                "a",
                label,
                1 / medians[name],
                "req/s",
                f"{medians[name] / base:.2f}x the baseline's time" + TARGETS.get(name, ""),
            )
        )
    count, statements = statements_per_request(service, path)
    rows += [
        Row("a", "GET reset_status latency (test client)", medians["reset_status"] * 1e6, "us/req"),
        Row("a", "SQL statements per reset_status request", count, "stmts"),
    ]
    return rows, statements


def section_view_data(service: Service, records: int, batch: int) -> list[Row] | str:
    """Section b: ingestion, stream delivery and snapshot replay, when the app takes changes.

    Each is also shown against its raw baseline (:mod:`bench.baselines`), run
    once just before and once just after it (the median of the two).
    """
    if records <= 0:
        return "skipped (--records 0)"
    if not service.has_rule(CHANGES_RULE):
        return "skipped: the app has no POST .../views/{v}/changes endpoint yet"
    service.run_worker_until_idle()  # finish the setup's reset first
    path = f"/v0/pipelines/{PIPELINE}/views/{VIEW}/changes"
    # Bodies are encoded up front so that only the service's work is timed.
    bodies = change_bodies(0, records, batch)
    texts = baselines.canonical_texts(bodies)
    rows = baselines.keyed(texts)
    scratch = service.workdir / "baseline"
    config = service.app.config
    delivery_batch = int(config["DELIVERY_BATCH_SIZE"])
    replay_batch = int(config["REPLAY_BATCH_SIZE"])

    pragmas = baselines.service_pragmas(service.app)
    raw_ingest = [baselines.sqlite_executemany(scratch.with_suffix(".db"), rows, batch, pragmas)]
    started = time.perf_counter()
    for body in bodies:
        service.call("POST", path, (200, 202), data=body, content_type="application/json")
    ingest = time.perf_counter() - started
    raw_ingest.append(
        baselines.sqlite_executemany(scratch.with_suffix(".db"), rows, batch, pragmas)
    )

    raw_deliver = [baselines.file_writes(scratch.with_suffix(".jsonl"), texts, delivery_batch)]
    started = time.perf_counter()
    service.run_worker_until_idle()
    deliver = time.perf_counter() - started
    raw_deliver.append(baselines.file_writes(scratch.with_suffix(".jsonl"), texts, delivery_batch))
    service.compact_log(seconds=120)
    log_after_delivery, appended, lag = service.log_state()

    token = service.issue_reset()
    raw_replay = [baselines.file_writes(scratch.with_suffix(".jsonl"), texts, replay_batch)]
    started = time.perf_counter()
    service.run_worker_until_idle()
    replay = time.perf_counter() - started
    raw_replay.append(baselines.file_writes(scratch.with_suffix(".jsonl"), texts, replay_batch))
    status = service.status(token)
    if status["status"] != "complete" or status["replayed_records"] != records:
        raise RuntimeError(f"the reset did not replay the {records} records: {status}")
    with open(service.sink_path, "rb") as sink:
        lines = sum(1 for _ in sink)
    if lines != records:
        raise RuntimeError(f"the sink holds {lines} lines after the replay, not {records}")
    replay_note = f"{records} of {status['snapshot_records']} replayed, sink checked"
    mb = sum(len(b) for b in bodies) / 1e6
    raw = {
        "ingest": statistics.median(raw_ingest),
        "deliver": statistics.median(raw_deliver),
        "replay": statistics.median(raw_replay),
    }

    def versus(seconds: float, baseline: str) -> str:
        return f"{seconds / raw[baseline]:.1f}x the raw baseline's time"

    return [
        Row(
            "b",
            f"ingestion, POST .../changes ({batch}/batch)",
            records / ingest,
            "records/s",
            f"{records} records, {mb:.1f} MB, {ingest:.2f}s; {versus(ingest, 'ingest')}"
            + TARGETS["ingestion"],
        ),
        Row(
            "b",
            f"raw baseline of ingestion: sqlite3 executemany, same rows ({batch}/transaction)",
            records / raw["ingest"],
            "records/s",
            f"{raw['ingest']:.2f}s; log and Z-set rows, keys computed beforehand",
        ),
        Row(
            "b",
            "stream delivery to a file sink (worker)",
            records / deliver,
            "records/s",
            f"{deliver:.2f}s; {versus(deliver, 'deliver')}" + TARGETS["delivery"],
        ),
        Row(
            "b",
            f"raw baseline of delivery: the same lines to a file ({delivery_batch}/write)",
            records / raw["deliver"],
            "records/s",
            f"{raw['deliver']:.3f}s",
        ),
        Row(
            "b",
            "reset: snapshot replay to a file sink",
            records / replay,
            "records/s",
            f"{replay:.2f}s; {replay_note}; {versus(replay, 'replay')}" + TARGETS["replay"],
        ),
        Row(
            "b",
            f"raw baseline of replay: the same lines to a file ({replay_batch}/write)",
            records / raw["replay"],
            "records/s",
            f"{raw['replay']:.3f}s",
        ),
        Row(
            "b",
            f"change log rows after {records} pushes, all delivered",
            log_after_delivery,
            "rows",
            f"every view's log (view_changes); {log_note(log_after_delivery, appended, lag)}",
        ),
    ]


def shown_argument(argument: str) -> str:
    """A command-line argument as printed: a database URL without its password."""
    option, equals, value = "", "", argument
    if argument.startswith("--") and "=" in argument:
        option, equals, value = argument.partition("=")
    if value.startswith("postgresql"):
        return option + equals + sa.make_url(value).render_as_string(hide_password=True)
    return argument


def database_note(url: str) -> str:
    """Name the PostgreSQL server of ``--database-url`` (its version; no password)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar_one()
    finally:
        engine.dispose()
    return f"PostgreSQL {version.split()[0]}, {sa.make_url(url).render_as_string()}"


def print_table(rows: list[Row], notes: dict[str, str]) -> None:
    """Print the results as a Markdown table (readable as is, pasteable into the README)."""
    print("| | measure | value | unit | note |")
    print("| --- | --- | ---: | --- | --- |")

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "/")

    for row in rows:
        value = (
            "-"
            if row.value is None
            else f"{row.value:.4f}"  # cores of an idle service
            if abs(row.value) < 1 and row.value != 0
            else f"{row.value:,.1f}"
            if row.value < 100
            else f"{row.value:,.0f}"
        )
        print(f"| {row.section} | {row.measure} | {value} | {row.unit} | {cell(row.note)} |")
    for section, note in notes.items():
        print(f"| {section} | {cell(note)} | | | |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="time per target in section a")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds in section a")
    parser.add_argument(
        "--records", type=int, default=100_000, help="records pushed in sections b and c"
    )
    parser.add_argument(
        "--batch", type=int, default=1000, help="records per POST in sections b and c"
    )
    served = parser.add_argument_group("over gunicorn (sections c and g)")
    served.add_argument(
        "--wrk-seconds", type=int, default=4, help="seconds of each wrk run (one target, one round)"
    )
    served.add_argument("--wrk-rounds", type=int, default=5, help="wrk rounds over the targets")
    served.add_argument("--connections", type=int, default=16, help="wrk connections")
    served.add_argument("--no-wrk", action="store_true", help="skip the wrk measurements")
    served.add_argument(
        "--latency-pushes",
        type=int,
        default=200,
        help="pushes timed until their line is in the sink",
    )
    served.add_argument(
        "--latency-gap", type=float, default=0.05, help="seconds between two timed pushes"
    )
    served.add_argument(
        "--clients", type=int, default=4, help="concurrent clients of the ingestion measurement"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also run section d (peak RSS; about 3 minutes)"
    )
    parser.add_argument(
        "--memory-records",
        type=_sizes,
        default=[200_000, 2_000_000],
        help="view sizes of section d, comma-separated",
    )
    scale = parser.add_argument_group("scale runs (--scale: section g alone; e with --in-process)")
    scale.add_argument(
        "--scale", action="store_true", help="run section g (over gunicorn) instead of a to f"
    )
    scale.add_argument(
        "--in-process",
        action="store_true",
        help="with --scale: run section e (the app in process, issue 10) instead of g",
    )
    scale.add_argument("--pipelines", type=int, default=100_000, help="pipelines of the big DB")
    scale.add_argument("--resets", type=int, default=1_000_000, help="resets of the big DB")
    scale.add_argument(
        "--changes", type=int, default=10_000_000, help="change-log rows of the big DB (e)"
    )
    scale.add_argument(
        "--scale-factor",
        type=float,
        default=1.0,
        help="multiply the big DB's sizes, and g's fairness and delivery sizes (0.01: quick)",
    )
    scale.add_argument(
        "--scale-records", type=int, default=50_000, help="records pushed to each DB in section e"
    )
    scale.add_argument(
        "--worker-seconds",
        type=float,
        default=1200.0,
        help="the most time the worker gets to deliver, then to go idle, in section e",
    )
    scale.add_argument(
        "--idle-seconds", type=float, default=20.0, help="each idle CPU window of section g"
    )
    scale.add_argument(
        "--fair-views", type=int, default=500, help="tenant A's views in section g (scaled)"
    )
    scale.add_argument(
        "--fair-connectors", type=int, default=20, help="file connectors of each of A's views"
    )
    scale.add_argument(
        "--fair-resets", type=int, default=1000, help="A's resets queued in section g (scaled)"
    )
    scale.add_argument(
        "--scrapes", type=int, default=3, help="cold /metrics scrapes of each kind in section g"
    )
    scale.add_argument(
        "--busy-views",
        type=int,
        default=64,
        help="busy connectors (a view each) of the delivery-processes curve (PostgreSQL)",
    )
    scale.add_argument(
        "--busy-records",
        type=int,
        default=20_000,
        help="backlog records of each busy connector (scaled)",
    )
    scale.add_argument(
        "--delivery-processes",
        type=_sizes,
        default=[1, 2, 4],
        help="DELIVERY_PROCESSES values of the curve, comma-separated",
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL URL to measure on instead of SQLite files; each database of the "
        "run is a schema there (bench_<name>), dropped and made again",
    )
    tables = parser.add_argument_group("table sinks (section f)")
    tables.add_argument(
        "--table-records",
        type=int,
        default=100_000,
        help="records delivered and replayed into each table sink in section f (0 skips it)",
    )
    tables.add_argument(
        "--sink-dsn",
        default=os.environ.get("BENCH_SINK_DSN"),
        help="a PostgreSQL DSN for section f's postgres sink table (default: $BENCH_SINK_DSN)",
    )
    parser.add_argument(
        "--cli", action="store_true", help="run section h alone (the command line, ~30 s)"
    )
    parser.add_argument("--cli-rounds", type=int, default=9, help="rounds of each command in h")
    parser.add_argument("--quick", action="store_true", help="a seconds-long run (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        # Small defaults; options given explicitly still win.
        parser.set_defaults(
            seconds=0.2,
            rounds=2,
            records=500,
            batch=100,
            wrk_seconds=1,
            wrk_rounds=2,
            latency_pushes=10,
            latency_gap=0.01,
            idle_seconds=1.0,
            scrapes=1,
            busy_views=4,
            memory_records=[200, 2000],
            scale_factor=0.001,
            scale_records=500,
            table_records=500,
            worker_seconds=60.0,
            cli_rounds=3,
        )
        args = parser.parse_args(argv)
    if args.database_url and not args.database_url.startswith("postgresql"):
        parser.error("--database-url takes a PostgreSQL URL (SQLite is the default)")
    return args


def _sizes(text: str) -> list[int]:
    """Parse comma-separated sizes such as ``200000,2000000``."""
    return [int(part) for part in text.split(",") if part.strip()]


def run_sections(
    sections: dict[str, Callable[[], list[Row] | str]], rows: list[Row], notes: dict[str, str]
) -> bool:
    """Run sections in order, adding their rows or their note; return whether one failed."""
    failed = False
    for section, run in sections.items():
        try:
            outcome = run()
        except PartialFailure as exc:
            # The section's other measurements stand; the failed ones say so in their rows.
            failed = True
            rows += exc.rows
            outcome = f"failed in part: {str(exc)[:300]}"
        except Exception as exc:
            # One broken section must not hide the others' numbers.
            failed = True
            outcome = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        if isinstance(outcome, str):
            notes[section] = outcome
        else:
            rows += outcome
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run every section and print the table; return the exit status."""
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = "python -m bench " + " ".join(shown_argument(a) for a in given)
    print(f"# pipeline-manager benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"# {command.strip()} | Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    if args.database_url:
        print(f"# database: {database_note(args.database_url)}")
    rows: list[Row] = []
    notes: dict[str, str] = {}
    statements: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pm-bench-") as tmp:
        workdir = Path(tmp)
        if args.cli:
            failed = run_sections({"h": lambda: section_cli_speed(args.cli_rounds)}, rows, notes)
        elif args.scale and args.in_process:
            failed = run_sections({"e": lambda: section_scale(workdir, args)}, rows, notes)
        elif args.scale:
            failed = run_sections({"g": lambda: section_served_scale(workdir, args)}, rows, notes)
        else:
            service = Service(workdir, args.database_url)
            try:
                service.setup_pipeline()
                service.run_worker_until_idle()
                section_rows, statements = section_reset_status(service, args.seconds, args.rounds)
                rows += section_rows
                sections = {
                    "b": lambda: section_view_data(service, args.records, args.batch),
                    "c": lambda: section_served(workdir, args),
                    "d": lambda: (
                        section_memory(workdir / "memory", args.database_url, args.memory_records)
                        if args.memory
                        else "skipped (no --memory)"
                    ),
                    "f": lambda: section_tables(
                        workdir, args.database_url, args.table_records, args.sink_dsn
                    ),
                    "h": lambda: section_cli_speed(args.cli_rounds),
                }
                failed = run_sections(sections, rows, notes)
            finally:
                service.close()
    print()
    print_table(rows, notes)
    print()
    if statements:
        print("SQL of one reset_status request:")
    for statement in statements:
        print(f"  {statement[:160]}")
    for section, note in notes.items():
        print(f"section {section} {note}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"command": command, "rows": [asdict(r) for r in rows], "notes": notes}, indent=2
            )
        )
    return 1 if failed else 0
