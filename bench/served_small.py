"""Section c: the service as users run it, on a small database.

The real gunicorn with the project's ``gunicorn.conf.py`` (:mod:`bench.served`:
default settings, its request workers and its delivery process) over a fresh
database made by the migrations, with the bench pipeline (a view, a file
connector, a reset), a ``latency`` pipeline (the same shape) and an ``ingest``
pipeline (one view, no connector), all made through the API. Measured, each
against a baseline of the same run:

- ``GET reset_status`` and ``GET /healthz`` with ``wrk`` against the bare Flask
  app under the same gunicorn settings, in rounds (median of the rounds);
- one pushed record until its line is in the file sink (``--latency-pushes``);
- ingestion of ``--records`` records (``--batch`` a request) while the pipeline
  is paused, from one client and from ``--clients`` clients at once, against
  plain ``sqlite3`` ``executemany`` of the same rows;
- their stream delivery once the pipeline resumes, against the same lines
  written to a file;
- ``POST .../reset`` until ``reset_status`` says complete, the sink checked to
  hold exactly ``--records`` lines, against the same lines written to a file
  with an ``fsync`` every 1,000 lines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path
from typing import Any

from bench import baselines, wrk
from bench.measure import Attempts, Row
from bench.memory import count_lines
from bench.probes import (
    Api,
    SinkWatch,
    ingest,
    progress,
    push_latency,
    reset_to_complete,
    wait_lines,
)
from bench.served import PLAIN_CONF, Server, service_env, wait_settled
from bench.service import CONNECTOR, PIPELINE, VIEW, Service, change_bodies

LATENCY_PIPELINE = "latency"
INGEST_PIPELINE = "ingest"
# Ids of the latency probes, clear of the bench records'.
PROBE_IDS = 1_000_000_000

TARGETS = {
    "reset_status": "target >= 0.70x, p99 <= 2x the bare app's",
    "healthz": "target >= 0.80x (issue 10)",
    "p50": "target <= 20 ms",
    "p99": "target <= 100 ms",
    "ingest": "target >= 0.20x",
    "reset": "target >= 0.50x",
}


def phase_times(status: dict[str, Any]) -> str:
    """Where a reset's time went, from its body: each phase's seconds, and until it was seen.

    The service's clock stamps the phases and the request and completion
    times; the row's own figure is the client's, from before ``POST .../reset``
    until ``reset_status`` said complete.
    """

    def seconds(start: str, end: str) -> float:
        return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()

    spans = [
        f"{phase['name']} {seconds(phase['started_at'], phase['ended_at']):.3f}s"
        for phase in status["phases"]
        if phase["name"] != "done"
    ]
    spans.append(
        f"requested to complete {seconds(status['requested_at'], status['completed_at']):.3f}s"
    )
    return ", ".join(spans)


def percentile(values: list[float], p: int) -> float:
    """The ``p``-th percentile (inclusive method; the maximum for p=100)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def plain_server(workdir: Path, service: Service) -> Server:
    """The bare Flask app under the project's gunicorn settings (not started)."""
    return Server(
        "plain",
        workdir,
        service_env(service),
        target="bench.plain_app:app",
        conf=PLAIN_CONF,
        ready_path="/",
    )


def wrk_rows(
    section: str,
    samples: dict[str, list[wrk.WrkResult]],
    comparisons: dict[str, dict[str, str]],
    labels: dict[str, str],
    setup: str,
) -> list[Row]:
    """Rows of wrk results, each compared with the targets ``comparisons`` names.

    ``comparisons`` maps a target to {base: what the issue asks}; the ratio is
    the median of the rounds' ratios (each round measures both back to back),
    the p99 ratio that of the medians.
    """
    medians = {name: wrk.median_result(results) for name, results in samples.items()}
    rows = []
    for name, result in medians.items():
        p = result.latency_ms
        parts = []
        for base, target in comparisons.get(name, {}).items():
            ratio = wrk.round_ratios(samples[name], samples[base])
            base_p99 = medians[base].latency_ms.get("99", 0.0)
            p99 = p.get("99", 0.0) / base_p99 if base_p99 else float("nan")
            parts.append(
                f"{ratio:.2f}x the req/s of {labels[base]}, p99 {p99:.1f}x its "
                f"{base_p99:.1f} ms ({target})"
            )
        parts.append(f"p50 {p.get('50', 0):.1f} ms, p99 {p.get('99', 0):.1f} ms; {setup}")
        if result.non_2xx or result.socket_errors:
            parts.append(
                f"{result.non_2xx} non-2xx, socket errors: {result.socket_errors or 'none'}"
            )
        rows.append(
            Row(
                section,
                f"gunicorn + wrk: {labels[name]}",
                result.requests_per_second,
                "req/s",
                "; ".join(parts),
            )
        )
    return rows


def wrk_setup(args: argparse.Namespace, rounds: int) -> str:
    """Say how wrk ran."""
    return (
        f"wrk -t2 -c{args.connections}, {rounds} rounds of {max(1, round(args.wrk_seconds))}s "
        "per target; gunicorn.conf.py defaults"
    )


def latency_rows(
    section: str, label: str, latencies: list[float], posts: list[float], extra: str = ""
) -> list[Row]:
    """p50 and p99 of push-to-sink latencies (ms), with the POST's own time."""
    ms = [s * 1000 for s in latencies]
    post = statistics.median(posts) * 1000
    common = f"{len(ms)} pushes of one record; the POST alone p50 {post:.1f} ms{extra}"
    return [
        Row(
            section,
            f"push -> line in the file sink, p50 ({label})",
            percentile(ms, 50),
            "ms",
            f"{TARGETS['p50']}; {common}",
        ),
        Row(
            section,
            f"push -> line in the file sink, p99 ({label})",
            percentile(ms, 99),
            "ms",
            f"{TARGETS['p99']}; max {max(ms):.1f} ms",
        ),
    ]


def measure_latency(
    apis: dict[str, Api], sinks: dict[str, Path], pushes: int, gap: float
) -> dict[str, tuple[list[float], list[float]]]:
    """Push one record at a time to each instance in turn; latencies and POST times of each."""
    watches = {name: SinkWatch(sink.parent) for name, sink in sinks.items()}
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in apis}
    try:
        for index in range(-3, pushes):  # three warm-up pushes each, not counted
            for name, api in apis.items():
                latency, post = push_latency(
                    api, LATENCY_PIPELINE, VIEW, sinks[name], watches[name], PROBE_IDS + index + 3
                )
                if index >= 0:
                    results[name][0].append(latency)
                    results[name][1].append(post)
                time.sleep(gap)
    finally:
        for watch in watches.values():
            watch.close()
    return results


def section_served(workdir: Path, args: argparse.Namespace) -> list[Row]:
    """Section c: start the service under gunicorn on a small database and measure it.

    A measurement that fails leaves a row saying so; the others' rows stand.
    """
    progress("section c: the service under gunicorn (gunicorn.conf.py), small database")
    service = Service(workdir, args.database_url, name="served", migrate=True)
    attempts = Attempts("c")
    try:
        service.setup_pipeline()
        service.make_pipeline(LATENCY_PIPELINE, [VIEW], [(VIEW, CONNECTOR, "latency.jsonl")])
        service.make_pipeline(INGEST_PIPELINE, [VIEW])
        service.call("POST", f"/v0/pipelines/{INGEST_PIPELINE}/pause", (200, 202))
        with Server("served", workdir, service_env(service)) as server:
            wait_settled(service)
            assert service.api_key is not None
            api = Api(server.base, service.api_key)
            if args.no_wrk:
                pass
            elif not wrk.installed():
                attempts.rows.append(
                    Row(
                        "c",
                        "gunicorn + wrk",
                        None,
                        "",
                        "skipped: wrk is not installed (apt-get install -y wrk)",
                    )
                )
            else:
                attempts.run("gunicorn + wrk", lambda: _wrk(workdir, service, server, args))
            progress(f"push -> sink latency, {args.latency_pushes} pushes")
            sink = service.sink_file("default", "latency.jsonl")

            def latency() -> list[Row]:
                latencies, posts = measure_latency(
                    {"served": api}, {"served": sink}, args.latency_pushes, args.latency_gap
                )["served"]
                return latency_rows("c", "small database", latencies, posts)

            attempts.run("push -> line in the file sink", latency)
            attempts.run(
                "ingestion, delivery, reset",
                lambda: _ingest_deliver_reset(workdir, service, server, api, args),
            )
        return attempts.done()
    finally:
        service.close()


def _wrk(workdir: Path, service: Service, server: Server, args: argparse.Namespace) -> list[Row]:
    """reset_status and /healthz against the bare app, all served at once, wrk in rounds."""
    auth = {"Authorization": f"Bearer {service.api_key}"}
    with plain_server(workdir, service) as plain:
        progress("wrk: bare Flask app, /healthz, reset_status")
        samples = wrk.rounds(
            {
                "plain": (plain.base + "/", {}),
                "healthz": (server.base + "/healthz", {}),
                "reset_status": (server.base + service.status_path(), auth),
            },
            args.wrk_seconds,
            args.connections,
            args.wrk_rounds,
            progress,
        )
    labels = {
        "plain": "the bare Flask app, GET / -> {} (baseline)",
        "healthz": "GET /healthz (one SELECT 1)",
        "reset_status": "GET reset_status (API key)",
    }
    comparisons = {
        "healthz": {"plain": TARGETS["healthz"]},
        "reset_status": {"plain": TARGETS["reset_status"]},
    }
    return wrk_rows("c", samples, comparisons, labels, wrk_setup(args, args.wrk_rounds))


def _ingest_deliver_reset(
    workdir: Path, service: Service, server: Server, api: Api, args: argparse.Namespace
) -> list[Row]:
    """Ingestion (paused), delivery once resumed, then a reset replaying it all."""
    records, batch, clients = args.records, args.batch, args.clients
    if records <= 0:
        return []
    bodies = change_bodies(0, records, batch)
    texts = baselines.canonical_texts(bodies)
    keyed = baselines.keyed(texts)
    pragmas = baselines.service_pragmas(service.app)
    scratch = workdir / "served-baseline"
    assert service.api_key is not None

    progress(f"ingestion: {records:,} records, 1 client then {clients} clients")
    api.action(PIPELINE, "pause")
    raw_ingest = [baselines.sqlite_executemany(scratch.with_suffix(".db"), keyed, batch, pragmas)]
    one = ingest(server.base, service.api_key, PIPELINE, VIEW, bodies, 1)
    many = ingest(server.base, service.api_key, INGEST_PIPELINE, VIEW, bodies, clients)
    raw_ingest.append(
        baselines.sqlite_executemany(scratch.with_suffix(".db"), keyed, batch, pragmas)
    )
    raw = statistics.median(raw_ingest)

    progress("stream delivery after resume")
    sink = service.sink_path
    delivery_batch = int(service.app.config["DELIVERY_BATCH_SIZE"])
    raw_writes = [baselines.file_writes(scratch.with_suffix(".jsonl"), texts, delivery_batch)]
    started = time.perf_counter()
    api.action(PIPELINE, "resume")
    wait_lines(sink, records, timeout=max(120.0, records / 1000))
    deliver = time.perf_counter() - started
    raw_writes.append(baselines.file_writes(scratch.with_suffix(".jsonl"), texts, delivery_batch))
    raw_write = statistics.median(raw_writes)

    progress("reset -> complete")
    raw_fsyncs = [baselines.file_fsync_writes(scratch.with_suffix(".jsonl"), texts)]
    reset, status = reset_to_complete(api, PIPELINE, VIEW, CONNECTOR)
    raw_fsyncs.append(baselines.file_fsync_writes(scratch.with_suffix(".jsonl"), texts))
    raw_fsync = statistics.median(raw_fsyncs)
    lines = count_lines(sink)
    if status["status"] != "complete" or lines != records:
        raise RuntimeError(f"the reset left {lines} lines in the sink, not {records}: {status}")

    engine = "SQLite" if pragmas else "PostgreSQL"
    return [
        Row(
            "c",
            f"ingestion over gunicorn, 1 client ({batch}/request, pipeline paused)",
            records / one,
            "records/s",
            f"{raw / one:.2f}x the raw baseline's records/s ({TARGETS['ingest']}); "
            f"{records:,} records in {one:.2f}s; {engine}",
        ),
        Row(
            "c",
            f"ingestion over gunicorn, {clients} clients at once",
            records / many,
            "records/s",
            f"{raw / many:.2f}x the raw baseline's records/s ({TARGETS['ingest']}); "
            f"{many:.2f}s; {many / one:.2f}x the one client's time",
        ),
        Row(
            "c",
            f"raw baseline of ingestion over gunicorn: sqlite3 executemany, {batch}/transaction",
            records / raw,
            "records/s",
            f"{raw:.2f}s (median of one run before, one after)",
        ),
        Row(
            "c",
            "stream delivery to a file sink after resume (delivery process)",
            records / deliver,
            "records/s",
            f"{deliver:.2f}s from POST resume to {records:,} lines; "
            f"{raw_write / deliver:.3f}x the raw baseline's records/s (no target)",
        ),
        Row(
            "c",
            f"raw baseline of delivery after resume: the lines to a file, {delivery_batch}/write",
            records / raw_write,
            "records/s",
            f"{raw_write:.3f}s",
        ),
        Row(
            "c",
            f"reset: POST .../reset -> reset_status complete, {records:,} records",
            records / reset,
            "records/s",
            f"{raw_fsync / reset:.2f}x the raw baseline's records/s ({TARGETS['reset']}); "
            f"{reset:.2f}s, reset_status polled every 5 ms ({phase_times(status)}); "
            f"sink checked: {lines:,} lines",
        ),
        Row(
            "c",
            "raw baseline of the reset: the same lines to a file, fsync every 1,000 lines",
            records / raw_fsync,
            "records/s",
            f"{raw_fsync:.3f}s",
        ),
    ]
