"""The benchmark run: measure, then print one table.

Sections:

a. ``GET reset_status`` through the Flask test client, against two baselines
   measured in the same run (a bare Flask app answering ``{}``, and a no-op
   route of the real app), interleaved in rounds so that machine noise hits
   all three alike; plus the SQL statements one request runs.
b. View data: ingestion records/s (``POST .../changes``), delivery of the
   stream to a file sink, and the replay of a reset's snapshot; skipped with a
   note while the app has no changes endpoint.
c. gunicorn + wrk over 127.0.0.1 (optional, bounded duration).
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event

from app.extensions import db
from bench import wrk
from bench.plain_app import create_plain_app
from bench.service import CHANGES_RULE, HEALTH_PATH, NOOP_PATH, PIPELINE, VIEW, Service


@dataclass
class Row:
    """One line of the results table."""

    section: str
    measure: str
    value: float | None
    unit: str
    note: str = ""


def seconds_per_call(call: Callable[[], Any], seconds: float) -> float:
    """Call ``call`` repeatedly for about ``seconds``; return the mean seconds per call."""
    count = 0
    started = time.perf_counter()
    while True:
        for _ in range(20):
            call()
        count += 20
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / count


def compare(targets: dict[str, Callable[[], Any]], seconds: float, rounds: int) -> dict[str, float]:
    """Median seconds per call of each target, measured in interleaved rounds."""
    for call in targets.values():
        for _ in range(50):  # warm-up: first-request work, caches, connections
            call()
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, call in targets.items():
            samples[name].append(seconds_per_call(call, seconds / rounds))
    return {name: statistics.median(values) for name, values in samples.items()}


def statements_per_request(
    service: Service, path: str, requests: int = 50
) -> tuple[float, list[str]]:
    """Count the SQL statements ``GET path`` runs; return the mean and one request's list."""
    with service.app.app_context():
        engine = db.engine
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        service.call("GET", path, (200,))
        one = list(seen)
        seen.clear()
        for _ in range(requests):
            service.call("GET", path, (200,))
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return len(seen) / requests, one


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
                f"{medians[name] / base:.2f}x the baseline's time",
            )
        )
    count, statements = statements_per_request(service, path)
    rows += [
        Row("a", "GET reset_status latency (test client)", medians["reset_status"] * 1e6, "us/req"),
        Row("a", "SQL statements per reset_status request", count, "stmts"),
    ]
    return rows, statements


def section_view_data(service: Service, records: int, batch: int) -> list[Row] | str:
    """Section b: ingestion, stream delivery and snapshot replay, when the app takes changes."""
    if records <= 0:
        return "skipped (--records 0)"
    if not service.has_rule(CHANGES_RULE):
        return "skipped: the app has no POST .../views/{v}/changes endpoint yet"
    service.run_worker_until_idle()  # finish the setup's reset first
    path = f"/v0/pipelines/{PIPELINE}/views/{VIEW}/changes"
    # Bodies are encoded up front so that only the service's work is timed.
    bodies = [
        json.dumps(
            [
                {"insert": {"id": i, "customer": f"c{i % 997}", "amount": i % 10_000 / 100}}
                for i in range(start, min(start + batch, records))
            ]
        ).encode()
        for start in range(0, records, batch)
    ]
    started = time.perf_counter()
    for body in bodies:
        service.call("POST", path, (200, 202), data=body, content_type="application/json")
    ingest = time.perf_counter() - started

    started = time.perf_counter()
    service.run_worker_until_idle()
    deliver = time.perf_counter() - started

    token = service.issue_reset()
    started = time.perf_counter()
    service.run_worker_until_idle()
    replay = time.perf_counter() - started
    status = service.status(token)
    if status["status"] != "complete" or status["replayed_records"] != records:
        raise RuntimeError(f"the reset did not replay the {records} records: {status}")
    with open(service.sink_path, "rb") as sink:
        lines = sum(1 for _ in sink)
    if lines != records:
        raise RuntimeError(f"the sink holds {lines} lines after the replay, not {records}")
    replay_note = f"{records} of {status['snapshot_records']} replayed, sink checked"
    mb = sum(len(b) for b in bodies) / 1e6
    return [
        Row(
            "b",
            f"ingestion, POST .../changes ({batch}/batch)",
            records / ingest,
            "records/s",
            f"{records} records, {mb:.1f} MB, {ingest:.2f}s",
        ),
        Row(
            "b",
            "stream delivery to a file sink (worker)",
            records / deliver,
            "records/s",
            f"{deliver:.2f}s",
        ),
        Row(
            "b",
            "reset: snapshot replay to a file sink",
            records / replay,
            "records/s",
            f"{replay:.2f}s; {replay_note}",
        ),
    ]


def section_wrk(service: Service, args: argparse.Namespace) -> list[Row] | str:
    """Section c: gunicorn + wrk, a bare Flask app then reset_status."""
    outcome = wrk.measure(
        service, args.wrk_seconds, args.connections, args.workers, args.threads, args.wrk_rounds
    )
    if isinstance(outcome, str):
        return outcome
    results = dict(outcome)
    base = results["plain Flask {}"].requests_per_second
    per_run = max(1, round(args.wrk_seconds / args.wrk_rounds))
    setup = (
        f"{args.workers} workers x {args.threads} threads, "
        f"{args.connections} connections, median of {args.wrk_rounds} x {per_run}s"
    )
    rows = []
    for name, result in outcome:
        p = result.latency_ms
        note = (
            f"{result.requests_per_second / base:.2f}x the baseline's req/s; "
            f"p50 {p.get('50', 0):.1f} ms, p99 {p.get('99', 0):.1f} ms"
        )
        if result.non_2xx or result.socket_errors:
            note += f"; {result.non_2xx} non-2xx, socket errors: {result.socket_errors or 'none'}"
        rows.append(
            Row("c", f"gunicorn + wrk: {name} ({setup})", result.requests_per_second, "req/s", note)
        )
    return rows


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
            else f"{row.value:,.1f}"
            if row.value < 100
            else f"{row.value:,.0f}"
        )
        print(f"| {row.section} | {row.measure} | {value} | {row.unit} | {cell(row.note)} |")
    for section, note in notes.items():
        print(f"| {section} | {cell(note)} | | | |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="time per target in section a")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds in section a")
    parser.add_argument("--records", type=int, default=100_000, help="records pushed in section b")
    parser.add_argument("--batch", type=int, default=1000, help="records per POST in section b")
    parser.add_argument(
        "--wrk-seconds", type=int, default=12, help="wrk time per target in section c"
    )
    parser.add_argument("--wrk-rounds", type=int, default=3, help="interleaved wrk rounds")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--no-wrk", action="store_true", help="skip section c")
    parser.add_argument("--quick", action="store_true", help="a seconds-long run (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        # Small defaults; options given explicitly still win.
        parser.set_defaults(
            seconds=0.2, rounds=2, records=500, batch=100, wrk_seconds=2, wrk_rounds=2
        )
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every section and print the table; return the exit status."""
    args = parse_args(argv)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"# pipeline-manager benchmark, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"# {command.strip()} | Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    rows: list[Row] = []
    notes: dict[str, str] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="pm-bench-") as tmp:
        service = Service(Path(tmp))
        try:
            service.setup_pipeline()
            service.run_worker_until_idle()
            section_rows, statements = section_reset_status(service, args.seconds, args.rounds)
            rows += section_rows
            sections = {
                "b": lambda: section_view_data(service, args.records, args.batch),
                "c": lambda: "skipped (--no-wrk)" if args.no_wrk else section_wrk(service, args),
            }
            for section, run in sections.items():
                try:
                    outcome = run()
                except Exception as exc:
                    # One broken section must not hide the others' numbers.
                    failed = True
                    outcome = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                if isinstance(outcome, str):
                    notes[section] = outcome
                else:
                    rows += outcome
        finally:
            service.close()
    print()
    print_table(rows, notes)
    print()
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
