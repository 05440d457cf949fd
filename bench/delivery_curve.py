"""Delivery throughput against the number of delivery processes (section g, PostgreSQL).

For each ``--delivery-processes`` value N (1, 2, 4): a fresh database (a
PostgreSQL schema) made by the migrations, one pipeline of ``--busy-views``
views with one file connector each, made through the API and paused; each
view given a backlog of ``--busy-records`` records by bulk SQL (the rows a
push writes: Z-set, change log, log head; :func:`bench.bulk.fill_view`).
Then gunicorn (``gunicorn.conf.py``) with ``PIPELINE_MANAGER_DELIVERY_PROCESSES=N``
and nothing else changed: ``POST .../resume`` over HTTP, and the time until
every connector has delivered its backlog (its position read every 20 ms),
each sink checked line by line. The CPU of the service's processes and of its
PostgreSQL server processes over that time says where the time went.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import bulk
from bench.measure import Attempts, Row
from bench.memory import count_lines
from bench.probes import Api, progress
from bench.served import (
    CpuMeter,
    PostgresServer,
    Server,
    application_name,
    service_env,
    wait_settled,
)
from bench.service import Service

PIPELINE = "busy"
BEHIND = (
    "SELECT count(*) FROM connectors c JOIN view_logs l ON l.view_id = c.view_id"
    " JOIN views v ON v.id = c.view_id JOIN pipelines p ON p.id = v.pipeline_id"
    " WHERE p.name = :pipeline AND c.delivered_seq < l.last_seq"
)


def _run(
    workdir: Path, url: str, processes: int, views: int, records: int
) -> tuple[float, dict[str, float]]:
    """Deliver the backlog with ``processes`` delivery processes; seconds and cores used."""
    service = Service(workdir, url, name=f"busy{processes}", migrate=True)
    postgres = PostgresServer(url)
    try:
        names = [f"v{i}" for i in range(views)]
        service.make_pipeline(PIPELINE, names, [(v, "sink", f"{v}.jsonl") for v in names])
        service.call("POST", f"/v0/pipelines/{PIPELINE}/pause", (200, 202))
        view_ids = [
            service.scalar(
                "SELECT v.id FROM views v JOIN pipelines p ON p.id = v.pipeline_id"
                " WHERE p.name = :pipeline AND v.name = :view",
                pipeline=PIPELINE,
                view=name,
            )
            for name in names
        ]
        for view_id in view_ids:
            bulk.fill_view(service, view_id, records)
        env = service_env(service, DELIVERY_PROCESSES=processes)
        with Server(f"busy{processes}", workdir, env) as server:
            wait_settled(service)
            assert service.api_key is not None
            api = Api(server.base, service.api_key)
            meter = CpuMeter(
                {
                    "service": server.pids,
                    "postgres": lambda: postgres.backends(application_name(service)),
                }
            )
            meter.start()
            started = time.perf_counter()
            api.action(PIPELINE, "resume")
            while service.scalar(BEHIND, pipeline=PIPELINE):
                if time.perf_counter() - started > 1800:
                    raise RuntimeError(f"{processes} delivery processes: not done in 1800s")
                time.sleep(0.02)
            seconds = time.perf_counter() - started
            used = meter.stop()
        for name in names:
            lines = count_lines(service.sink_file("default", f"{name}.jsonl"))
            if lines != records:
                raise RuntimeError(f"sink {name}.jsonl holds {lines} lines, not {records}")
        return seconds, {name: use.cores for name, use in used.items()}
    finally:
        postgres.close()
        service.close()


def section_delivery_curve(workdir: Path, args: argparse.Namespace) -> list[Row]:
    """Rows of the curve: records/s for each number of delivery processes."""
    views = args.busy_views
    records = max(100, round(args.busy_records * args.scale_factor))
    total = views * records
    attempts = Attempts("g")
    first: list[float] = []

    def measure(processes: int) -> list[Row]:
        seconds, cores = _run(workdir, args.database_url, processes, views, records)
        rate = total / seconds
        base = first[0] if first else rate
        first.append(rate)
        return [
            Row(
                "g",
                f"delivery, {views} busy connectors, {processes} delivery processes",
                rate,
                "records/s",
                f"{rate / base:.2f}x the first's records/s; {total:,} records in "
                f"{seconds:.2f}s from POST resume, every sink checked; CPU meanwhile: service "
                f"{cores['service']:.2f} cores, its PostgreSQL backends "
                f"{cores['postgres']:.2f} cores",
            )
        ]

    for processes in args.delivery_processes:
        progress(f"delivery with {processes} delivery processes: {views} x {records:,} records")
        attempts.run(
            f"delivery, {views} busy connectors, {processes} delivery processes",
            lambda processes=processes: measure(processes),
        )
    return attempts.done()
