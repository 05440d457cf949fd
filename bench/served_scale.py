"""Section g (``--scale``): the service as users run it, at 100,000 connectors.

Two databases made by the migrations (SQLite files, or PostgreSQL schemas with
``--database-url``), each with the bench pipeline and a ``latency`` pipeline
made through the API. The big one also gets, by bulk SQL
(:func:`bench.bulk.build_scale`), ``--pipelines`` running pipelines of one view
and one file connector each, in sync with nothing to deliver, and ``--resets``
complete resets; and tenants A and B of the fairness measurement
(:mod:`bench.fairness`). Each is served by the real gunicorn with the
project's ``gunicorn.conf.py`` (:mod:`bench.served`), the bare Flask app beside
them under the same settings. Measured, each against a baseline of the run:

1. idle CPU of the whole service (every process of gunicorn's tree, from
   ``/proc``) over ``--idle-seconds``, against the small database's and the bare
   app's; on PostgreSQL also the server's processes: the service's backends
   (by ``application_name``), and every server process against a window with no
   service running;
2. and 3. ``GET reset_status`` with wrk, big and small and the bare app in
   rounds;
4. push -> line in the file sink, the two databases taking turns;
7. tenant fairness (:mod:`bench.fairness`);
8. ``GET /metrics``: a tenant's scrape (a read key of the 100,000 connectors'
   tenant) and an operator's (``METRICS_OPERATOR_TENANT``), cold (each after the
   scrape cache's time), against the same on the small database;
9. on PostgreSQL, delivery with 1, 2 and 4 delivery processes
   (:mod:`bench.delivery_curve`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

from bench import bulk, fairness, wrk
from bench.delivery_curve import section_delivery_curve
from bench.measure import Attempts, Row
from bench.probes import Api, progress, scrape
from bench.scale import sizes
from bench.served import (
    CpuUse,
    PostgresServer,
    Server,
    application_name,
    measure_cpu,
    role_note,
    service_env,
    wait_settled,
)
from bench.served_small import (
    LATENCY_PIPELINE,
    latency_rows,
    measure_latency,
    plain_server,
    wrk_rows,
    wrk_setup,
)
from bench.service import CONNECTOR, PIPELINE, VIEW, Service

OPERATOR = "ops"
IDLE_TARGET = 0.02


def section_served_scale(workdir: Path, args: argparse.Namespace) -> list[Row]:
    """Build both databases, serve them, measure; on PostgreSQL also the delivery curve.

    A measurement that fails leaves a row saying so, and the others' rows
    stand (:class:`bench.measure.Attempts`); the run then fails.
    """
    attempts = Attempts("g")
    _scale(workdir, args, attempts)
    if args.database_url:
        attempts.run(
            "delivery with 1, 2, 4 delivery processes",
            lambda: section_delivery_curve(workdir, args),
        )
    else:
        attempts.rows.append(
            Row(
                "g",
                "delivery with 1, 2, 4 delivery processes",
                None,
                "",
                "measured on PostgreSQL only (--database-url)",
            )
        )
    return attempts.done()


def _scale(workdir: Path, args: argparse.Namespace, attempts: Attempts) -> None:
    """Measurements 1 to 8: build, serve and measure both databases into ``attempts``."""
    pipelines, resets, _changes = sizes(args)
    factor = args.scale_factor
    small = Service(workdir, args.database_url, name="small", migrate=True)
    big = Service(workdir, args.database_url, name="scale", migrate=True)
    postgres = PostgresServer(args.database_url) if args.database_url else None
    try:
        keys = {}
        for service in (small, big):
            service.setup_pipeline()
            service.make_pipeline(LATENCY_PIPELINE, [VIEW], [(VIEW, CONNECTOR, "latency.jsonl")])
            keys[service.name] = (
                service.new_key("default", "read", "tenant-scrape"),
                service.new_key(OPERATOR, "read", "operator-scrape"),
            )
        view_id = big.scalar(
            "SELECT v.id FROM views v JOIN pipelines p ON p.id = v.pipeline_id"
            " WHERE p.name = :pipeline AND v.name = :view",
            pipeline=PIPELINE,
            view=VIEW,
        )
        progress(f"building {pipelines:,} pipelines and {resets:,} resets in bulk")
        counts = bulk.build_scale(big, pipelines, resets, 0, view_id)
        views = max(1, round(args.fair_views * factor))
        fair_resets = max(1, round(args.fair_resets * factor))
        progress(f"tenant A: {views} views x {args.fair_connectors} connectors")
        started = time.perf_counter()
        tenants = fairness.build(big, views, args.fair_connectors, fair_resets)
        built = time.perf_counter() - started
        attempts.rows.append(
            Row(
                "g",
                "scale database built with bulk SQL",
                counts.seconds + built,
                "s",
                f"{counts.pipelines:,} running pipelines of tenant default (a view, a file "
                f"connector each, in sync), {counts.resets:,} complete resets; tenant A: "
                f"{views * args.fair_connectors:,} file connectors on {views} views of one "
                f"pipeline ({built:.1f}s); tenant B: one connector",
            )
        )
        settings = {"METRICS_OPERATOR_TENANT": OPERATOR}
        with contextlib.ExitStack() as stack:
            baseline = None
            if postgres is not None and postgres.local:
                progress(f"idle: PostgreSQL with no service, {args.idle_seconds:.0f}s")
                baseline = measure_cpu({"postgres": postgres.tree}, args.idle_seconds)["postgres"]
            progress("starting gunicorn on the scale database")
            big_server = stack.enter_context(Server("scale", workdir, service_env(big, **settings)))
            plain = stack.enter_context(plain_server(workdir, small))
            settled = wait_settled(big)
            progress(f"settled in {settled:.0f}s")
            time.sleep(1.0)
            progress(f"idle: the scale database's service, {args.idle_seconds:.0f}s")
            groups = {"big": big_server.pids, "plain": plain.pids}
            if baseline is not None:
                assert postgres is not None
                groups["postgres"] = postgres.tree
                groups["backends"] = lambda: postgres.backends(application_name(big))
            idle_big = measure_cpu(groups, args.idle_seconds)
            big_roles, plain_roles = big_server.roles(), plain.roles()
            small_server = stack.enter_context(
                Server("small", workdir, service_env(small, **settings))
            )
            wait_settled(small)
            time.sleep(1.0)
            progress(f"idle: the service, small database, {args.idle_seconds:.0f}s")
            idle_small = measure_cpu({"small": small_server.pids}, args.idle_seconds)["small"]
            attempts.rows += _idle_rows(
                idle_big,
                big_roles,
                plain_roles,
                idle_small,
                small_server.roles(),
                baseline,
                pipelines,
            )
            if not args.no_wrk and wrk.installed():
                attempts.run(
                    "gunicorn + wrk: reset_status",
                    lambda: _wrk(big, big_server, small, small_server, plain, args),
                )
            plain.stop()
            apis = {
                "small": Api(small_server.base, str(small.api_key)),
                "big": Api(big_server.base, str(big.api_key)),
            }
            sinks = {
                "small": small.sink_file("default", "latency.jsonl"),
                "big": big.sink_file("default", "latency.jsonl"),
            }
            progress(f"push -> sink latency, {args.latency_pushes} pushes to each database")
            attempts.run(
                "push -> line in the file sink",
                lambda: _latency_rows(
                    measure_latency(apis, sinks, args.latency_pushes, args.latency_gap), pipelines
                ),
            )
            samples = 3 if args.latency_pushes < 50 else 9
            attempts.run(
                "fairness: tenant B beside tenant A",
                lambda: fairness.measure(big, big_server.base, tenants, samples),
            )
            attempts.run(
                "GET /metrics",
                lambda: _metrics(
                    {"small": small_server.base, "big": big_server.base},
                    keys,
                    args.scrapes,
                    float(big.app.config["METRICS_CACHE_SECONDS"]),
                    pipelines,
                ),
            )
    finally:
        if postgres is not None:
            postgres.close()
        small.close()
        big.close()


def _idle_rows(
    idle: dict[str, CpuUse],
    big_roles: dict[int, str],
    plain_roles: dict[int, str],
    small: CpuUse,
    small_roles: dict[int, str],
    baseline: CpuUse | None,
    pipelines: int,
) -> list[Row]:
    big, plain = idle["big"], idle["plain"]
    met = "met" if big.cores <= IDLE_TARGET else "NOT met"
    window = f"{big.seconds:.0f}s window"
    rows = [
        Row(
            "g",
            f"idle CPU, the whole service, {pipelines:,} running connectors",
            big.cores,
            "cores",
            f"target <= {IDLE_TARGET} cores: {met}; {window}; "
            f"{big.cores / max(small.cores, 1e-9):.1f}x the small database's; "
            f"{role_note(big, big_roles)}",
        ),
        Row(
            "g",
            "idle CPU, the whole service, small database (baseline)",
            small.cores,
            "cores",
            f"{small.seconds:.0f}s window, after the first; {role_note(small, small_roles)}",
        ),
        Row(
            "g",
            "idle CPU, the bare Flask app under the same gunicorn settings",
            plain.cores,
            "cores",
            f"the same window as the scale database's; {role_note(plain, plain_roles)}",
        ),
    ]
    if baseline is not None:
        server, backends = idle["postgres"], idle["backends"]
        rows += [
            Row(
                "g",
                "idle CPU, PostgreSQL: the service's server processes",
                backends.cores,
                "cores",
                f"{len(backends.by_pid)} backends (pg_stat_activity, by the served "
                f"processes' application_name); the scale database's window",
            ),
            Row(
                "g",
                "idle CPU, PostgreSQL: every server process, the service idle",
                server.cores,
                "cores",
                f"{server.cores - baseline.cores:+.4f} cores over the baseline; "
                f"{len(server.by_pid)} processes; other clients of the same server count too",
            ),
            Row(
                "g",
                "idle CPU, PostgreSQL: every server process, no service (baseline)",
                baseline.cores,
                "cores",
                f"{baseline.seconds:.0f}s window before gunicorn started",
            ),
        ]
    return rows


def _wrk(
    big: Service,
    big_server: Server,
    small: Service,
    small_server: Server,
    plain: Server,
    args: argparse.Namespace,
) -> list[Row]:
    """reset_status on both databases and the bare app, all served at once, wrk in rounds."""
    progress("wrk: reset_status, small and scale databases, and the bare app")
    samples = wrk.rounds(
        {
            "small": (
                small_server.base + small.status_path(),
                {"Authorization": f"Bearer {small.api_key}"},
            ),
            "big": (
                big_server.base + big.status_path(),
                {"Authorization": f"Bearer {big.api_key}"},
            ),
            "plain": (plain.base + "/", {}),
        },
        args.wrk_seconds,
        args.connections,
        args.wrk_rounds,
        progress,
    )
    labels = {
        "small": "GET reset_status, small database",
        "big": "GET reset_status, scale database",
        "plain": "the bare Flask app, GET / -> {}",
    }
    comparisons = {
        "big": {
            "small": "target >= 0.90x the small database's",
            "plain": "target >= 0.70x, p99 <= 2x the bare app's",
        },
        "small": {"plain": "target >= 0.70x, p99 <= 2x the bare app's"},
    }
    return wrk_rows("g", samples, comparisons, labels, wrk_setup(args, args.wrk_rounds))


def _latency_rows(latency: dict[str, tuple[list[float], list[float]]], pipelines: int) -> list[Row]:
    small_ms = statistics.median(latency["small"][0]) * 1000
    big_ms = statistics.median(latency["big"][0]) * 1000
    return latency_rows(
        "g",
        f"{pipelines:,} idle connectors beside it",
        *latency["big"],
        extra=f"; {big_ms / small_ms:.2f}x the small database's p50, pushed in turn",
    ) + latency_rows("g", "small database: baseline", *latency["small"])


def _metrics(
    bases: dict[str, str],
    keys: dict[str, tuple[str, str]],
    rounds: int,
    cache_seconds: float,
    pipelines: int,
) -> list[Row]:
    """Cold scrapes, a tenant's and the operator's, of each database."""
    progress(f"/metrics: {rounds} cold rounds (one every {cache_seconds + 0.5:.1f}s)")
    names = {"small": "small", "big": "scale"}
    seen: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for index in range(rounds):
        if index:
            time.sleep(cache_seconds + 0.5)  # every process's scrape cache has run out
        for db, base in bases.items():
            tenant_key, operator_key = keys[names[db]]
            seen.setdefault((db, "tenant"), []).append(scrape(base, tenant_key))
            seen.setdefault((db, "operator"), []).append(scrape(base, operator_key))

    def median(db: str, kind: str) -> tuple[float, int]:
        values = seen[(db, kind)]
        return statistics.median(v[0] for v in values), max(v[1] for v in values)

    rows = []
    for kind, label in (
        ("tenant", "a tenant's scrape (read key of tenant default)"),
        ("operator", "the operator's scrape (METRICS_OPERATOR_TENANT)"),
    ):
        big_s, big_b = median("big", kind)
        small_s, small_b = median("small", kind)
        target = (
            f"target < 1 s and < 2 MB: {'met' if big_s < 1 and big_b < 2e6 else 'NOT met'}; "
            if kind == "tenant"
            else ""
        )
        rows += [
            Row(
                "g",
                f"GET /metrics, {label}, {pipelines:,} connectors",
                big_s * 1000,
                "ms",
                f"{target}{big_b / 1e6:.2f} MB; {big_s / small_s:.1f}x the small database's "
                f"time, {big_b / max(small_b, 1):.1f}x its bytes; median of {rounds} cold "
                f"scrapes, slowest {max(v[0] for v in seen[('big', kind)]) * 1000:.0f} ms",
            ),
            Row(
                "g",
                f"GET /metrics, {label}, small database (baseline)",
                small_s * 1000,
                "ms",
                f"{small_b / 1e3:.1f} kB",
            ),
        ]
    return rows
