"""``GET /metrics`` at scale: a tenant's scrape and the operator's, cold and cached.

```sh
.venv/bin/python -m bench.metrics_scale                       # 100,000 connectors, SQLite
.venv/bin/python -m bench.metrics_scale --connectors 10000    # seconds
.venv/bin/python -m bench.metrics_scale --database-url postgresql+psycopg://USER:PASSWORD@HOST/DB
```

The real app (:class:`bench.service.Service`) on a temporary SQLite file (or a
fresh PostgreSQL schema), filled by bulk ``INSERT ... SELECT`` (``bench/bulk.py``):
tenant ``default`` gets ``--connectors`` running pipelines with one view and
one file connector each (a mix of states: some failed, some resetting, some
failing, some lagging, some paused) and one complete reset per connector;
``--tenants`` more tenants get ``--small`` such connectors each. Then, through
the test client with read keys (``default``'s, and the operator tenant's):

- **cold**: the scrape cache emptied first, so the queries run;
- **cached**: the same scrape again, within ``METRICS_CACHE_SECONDS``;
- **parallel**: ``--parallel`` scrapes of ``default`` at once, cache emptied:
  they wait for one computation (the issue's eight scrapes took other
  requests to ~30 s).

Each figure is the median of ``--rounds`` runs; CPU is this process's.
The issue's target: at 100,000 connectors a tenant's scrape under 1 s and under 2 MB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from app import metrics
from app.auth import service as auth_service
from app.extensions import db
from bench import bulk
from bench.service import Service

OPERATOR = "ops"
BIG = "default"
# Ids of this bench's rows start here (UUIDs made from row numbers), clear of bulk.UUID_BASE's.
UUID_BASE = 0xC0_0000_0000


def add_tenant(service: Service, tenant: str, count: int, first: int) -> None:
    """Add ``count`` pipelines of ``tenant`` with a view, a connector and a reset each.

    Row numbers ``first + 1 ... first + count`` make the ids. States, by row
    number: every 97th connector failed, every 89th resetting, every 31st
    failing deliveries, every 13th lagging (its view's log 10 ahead), every
    53rd paused.
    """
    conn, sql = bulk.connect(service)
    n = "(:first + {n})"
    common = {"first": first, "ubase": UUID_BASE, "tenant": tenant}
    try:
        bulk.insert_rows(
            conn,
            sql,
            "pipelines",
            {
                "id": sql.uuid(f":ubase + {n}"),
                "tenant": ":tenant",
                "name": "'metrics-' || " + sql.text(n),
                "description": "''",
                "status": "'running'",
                "incarnation": "1",
                "created_at": ":now",
                "status_since": ":now",
            },
            count,
            **common,
        )
        bulk.insert_rows(
            conn,
            sql,
            "views",
            {
                "id": n,
                "pipeline_id": sql.uuid(f":ubase + {n}"),
                "name": "'totals'",
                "position": "0",
            },
            count,
            **common,
        )
        bulk.insert_rows(
            conn,
            sql,
            "view_logs",
            {"view_id": n, "last_seq": f"CASE WHEN {n} % 13 = 0 THEN 10 ELSE 0 END"},
            count,
            **common,
        )
        connector = {
            "id": n,
            "uid": sql.uuid(f":ubase + {n}"),
            "view_id": n,
            "name": "'sink'",
            "transport": "'file'",
            "config": sql.json("'{}'"),
            "sync_state": (
                f"CASE WHEN {n} % 97 = 0 THEN 'failed' "
                f"WHEN {n} % 89 = 0 THEN 'resetting' ELSE 'in_sync' END"
            ),
            "paused": f"{n} % 53 = 0",
            "consecutive_failures": f"CASE WHEN {n} % 31 = 0 THEN 3 ELSE 0 END",
            "transport_errors": f"CASE WHEN {n} % 31 = 0 THEN 3 ELSE 0 END",
            "transmitted_records": n,
            "transmitted_bytes": f"40 * {n}",
            "created_at": ":now",
        }
        # A model that keeps the pipeline's tenant on its connectors gets it too.
        if "tenant" in db.metadata.tables["connectors"].columns:
            connector["tenant"] = ":tenant"
        bulk.insert_rows(conn, sql, "connectors", connector, count, **common)
        bulk.insert_rows(
            conn,
            sql,
            "resets",
            {
                "id": sql.uuid(f":ubase + {n}"),
                "pipeline_id": sql.uuid(f":ubase + {n}"),
                "connector_id": n,
                "incarnation": "1",
                "status": "'complete'",
                "phase": "'done'",
                "token": "'bench'",
                "snapshot_records": "0",
                "replayed_records": "7",
                "requested_at": ":now",
                "started_at": ":now",
                "completed_at": ":now",
                "attempts": "1",
            },
            count,
            **common,
        )
        conn.commit()
        if sql.postgres:
            for table in ("views", "connectors"):
                setval = f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id))"
                conn.execute(sa.text(f"{setval} FROM {table}"))
            conn.commit()
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    finally:
        conn.close()


def read_key(service: Service, tenant: str) -> dict[str, str]:
    """A read key of ``tenant``, as request headers."""
    with service.app.app_context():
        _record, secret = auth_service.create_key(tenant, f"scraper-{tenant}", "read")
        db.session.remove()
    return {"Authorization": f"Bearer {secret}"}


def scrape(service: Service, headers: dict[str, str]) -> tuple[float, float, bytes]:
    """One ``GET /metrics``: wall seconds, CPU seconds, and the body."""
    client = service.app.test_client()
    wall, cpu = time.perf_counter(), time.process_time()
    response = client.get("/metrics", headers=headers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if response.status_code != 200:
        raise RuntimeError(f"GET /metrics answered {response.status_code}")
    return wall, cpu, response.get_data()


def listed(body: bytes, tenant: str) -> int:
    """How many connectors of ``tenant`` the scrape lists one by one."""
    series = b"pipeline_manager_connector_lag_records{"
    label = f'tenant="{tenant}"'.encode()
    return sum(1 for line in body.splitlines() if line.startswith(series) and label in line)


@dataclass
class Figures:
    """A scrape's medians: cold (queries run) and cached, wall and CPU seconds; its last body."""

    cold_s: float
    cold_cpu_s: float
    cached_s: float
    cached_cpu_s: float
    body: bytes


def measure(service: Service, headers: dict[str, str], rounds: int) -> Figures:
    """Scrape ``rounds`` times cold (cache emptied) and each time once more cached."""
    cache: metrics.ScrapeCache = service.app.extensions[metrics.CACHE_EXTENSION]
    cold, cached = [], []
    body = b""
    for _ in range(rounds):
        cache.clear()
        cold.append(scrape(service, headers)[:2])
        wall, cpu, body = scrape(service, headers)
        cached.append((wall, cpu))
    return Figures(
        statistics.median(w for w, _ in cold),
        statistics.median(c for _, c in cold),
        statistics.median(w for w, _ in cached),
        statistics.median(c for _, c in cached),
        body,
    )


def parallel(service: Service, headers: dict[str, str], scrapers: int) -> tuple[float, int]:
    """``scrapers`` scrapes at once, cache emptied: the slowest's seconds, computations run."""
    service.app.extensions[metrics.CACHE_EXTENSION].clear()
    with service.app.app_context():
        engine = db.engine
    computations = 0

    def count(conn, cursor, statement: str, *args: object) -> None:
        nonlocal computations
        # The totals query runs once per computation of a scope.
        computations += "sum(connectors.transmitted_records)" in statement

    start = threading.Barrier(scrapers)
    times: list[float] = []

    def one() -> None:
        start.wait()
        times.append(scrape(service, headers)[0])

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        threads = [threading.Thread(target=one) for _ in range(scrapers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return max(times), computations


def run(args: argparse.Namespace, workdir: Path) -> None:
    """Build the database, measure, print the results."""
    service = Service(workdir, args.database_url, name="metrics")
    try:
        service.app.config["METRICS_OPERATOR_TENANT"] = OPERATOR
        started = time.perf_counter()
        add_tenant(service, BIG, args.connectors, first=0)
        for i in range(args.tenants):
            first = args.connectors + i * args.small
            add_tenant(service, f"tenant-{i:02d}", args.small, first=first)
        total = args.connectors + args.tenants * args.small
        built = time.perf_counter() - started
        print(
            f"# {service.dialect}: {total:,} connectors ({args.connectors:,} of {BIG!r}, "
            f"{args.tenants} tenants of {args.small:,}) built in {built:.1f}s; "
            f"METRICS_MAX_ROWS={service.app.config['METRICS_MAX_ROWS']:,}",
            flush=True,
        )
        print(f"{'scrape':<10} {'cold s':>8} {'cpu s':>7} {'cached s':>9} {'bytes':>11}  listed")
        others = [f"tenant-{i:02d}" for i in range(args.tenants)]
        keys = {tenant: read_key(service, tenant) for tenant in (BIG, OPERATOR)}
        for name, tenant in ((BIG, BIG), ("operator", OPERATOR)):
            got = measure(service, keys[tenant], args.rounds)
            shown = f"{listed(got.body, BIG):,}"
            if tenant == OPERATOR:
                rest = sum(listed(got.body, other) for other in others)
                shown += f" of {BIG!r} + {rest:,} of the {len(others)} others"
            print(
                f"{name:<10} {got.cold_s:>8.3f} {got.cold_cpu_s:>7.3f} "
                f"{got.cached_s:>9.4f} {len(got.body):>11,}  {shown}",
                flush=True,
            )
        slowest, computations = parallel(service, keys[BIG], args.parallel)
        print(
            f"{args.parallel} parallel scrapes of {BIG!r}, cold: slowest {slowest:.3f}s, "
            f"{computations} computation(s)"
        )
    finally:
        service.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run in a temporary folder."""
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_scale", description=__doc__)
    parser.add_argument("--connectors", type=int, default=100_000, help="connectors of 'default'")
    parser.add_argument("--tenants", type=int, default=10, help="other tenants")
    parser.add_argument("--small", type=int, default=100, help="connectors of each other tenant")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--parallel", type=int, default=8, help="scrapes at once")
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a SQLite file)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="metrics-scale-") as workdir:
        run(args, Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
