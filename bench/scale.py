"""Section e (``--scale``): the hot paths on a big database against a small one, same run.

Two databases are made side by side (SQLite files, or two PostgreSQL schemas
with ``--database-url``), each with the bench pipeline made through the API.
The big one then gets, by bulk SQL (:func:`bench.bulk.build_scale`),
``--pipelines`` more running pipelines with a view and a file connector each,
``--resets`` complete resets spread over them, and ``--changes`` change-log
rows: pushes to the bench view that its connector has yet to deliver. Then:

- ``GET reset_status`` in process on both, interleaved in rounds (target: the
  big database within 10% of the small one's time);
- ingestion through ``POST .../changes``, the two databases taking the same
  batches in turn (target: within 20% of the small one's records/s);
- delivery by the worker: on the small database the pushed records, on the
  big one the whole backlog (``--changes`` plus the pushed records), checked
  line by line in the sink, within ``--worker-seconds``;
- the change log's size once the worker is idle: every row of
  ``view_changes``, and the largest connector lag. Every row has been
  delivered by then, so a worker that compacts the log leaves about none;
  without compaction the log keeps every row ever pushed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from bench import bulk
from bench.measure import Row, paired_ratio, statements_per_request
from bench.memory import count_lines
from bench.service import PIPELINE, VIEW, Service, change_bodies, log_note


def sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """Pipelines, resets and change-log rows of the run (``--scale-factor`` applied)."""
    factor = args.scale_factor
    return (
        max(1, round(args.pipelines * factor)),
        max(0, round(args.resets * factor)),
        max(0, round(args.changes * factor)),
    )


def progress(message: str) -> None:
    """Say on stderr what the run is doing (its steps take minutes at full size)."""
    print(f"# {dt.datetime.now(dt.UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


def deliver_pushed(service: Service, seconds: float) -> tuple[float, bool]:
    """Run the worker until the bench connector has every pushed change; return the time.

    Also return whether it got there within ``seconds``.
    """
    view_sql = (
        "SELECT c.delivered_seq - l.last_seq FROM connectors c"
        " JOIN view_logs l ON l.view_id = c.view_id JOIN views v ON v.id = c.view_id"
        " JOIN pipelines p ON p.id = v.pipeline_id WHERE p.name = :pipeline AND v.name = :view"
    )
    started = time.perf_counter()
    while service.scalar(view_sql, pipeline=PIPELINE, view=VIEW) < 0:
        if time.perf_counter() - started > seconds or not service.run_worker_until_idle(limit=1):
            return time.perf_counter() - started, False
    return time.perf_counter() - started, True


def section_scale(workdir: Path, args: argparse.Namespace) -> list[Row]:
    """Build the small and the big database, measure both, return the rows of section e."""
    pipelines, resets, changes = sizes(args)
    small = Service(workdir, args.database_url, name="small")
    big = Service(workdir, args.database_url, name="scale")
    try:
        for service in (small, big):
            service.setup_pipeline()
            service.run_worker_until_idle()
        view_id = big.scalar(
            "SELECT v.id FROM views v JOIN pipelines p ON p.id = v.pipeline_id"
            " WHERE p.name = :pipeline AND v.name = :view",
            pipeline=PIPELINE,
            view=VIEW,
        )
        progress(f"building {pipelines:,} pipelines, {resets:,} resets, {changes:,} log rows")
        counts = bulk.build_scale(big, pipelines, resets, changes, view_id)
        rows = [
            Row(
                "e",
                "scale database built with bulk SQL",
                counts.seconds,
                "s",
                f"{counts.pipelines:,} pipelines (a view, a file connector each), "
                f"{counts.resets:,} resets, {counts.changes:,} change-log rows "
                "(a backlog of the bench view)",
            )
        ]
        progress(f"built in {counts.seconds:.0f}s; measuring reset_status")
        rows += _reset_status(small, big, args)
        progress("measuring ingestion")
        rows += _ingestion(small, big, args)
        progress(f"delivering {counts.changes + args.scale_records:,} changes")
        rows += _delivery_and_log(small, big, args, counts.changes)
        return rows
    finally:
        small.close()
        big.close()


def _reset_status(small: Service, big: Service, args: argparse.Namespace) -> list[Row]:
    """reset_status on both databases, interleaved; the big one's time against the small's."""
    paths = {"small": small.status_path(), "big": big.status_path()}
    for name, service in (("small", small), ("big", big)):
        service.call("GET", paths[name], (200,))
    # Many short rounds: the ratio is the median of back-to-back pairs.
    rounds = 4 * args.rounds
    small_time, big_time, ratio = paired_ratio(
        lambda: small.client.get(paths["small"]),
        lambda: big.client.get(paths["big"]),
        2 * args.seconds,
        rounds,
    )
    statements, _ = statements_per_request(big, paths["big"], requests=20)
    return [
        Row("e", "GET reset_status, small database", 1 / small_time, "req/s", ""),
        Row(
            "e",
            "GET reset_status, scale database",
            1 / big_time,
            "req/s",
            f"{ratio:.2f}x the small database's time (target <= 1.10; median of {rounds} "
            f"back-to-back pairs); {statements:.0f} SQL statements per request",
        ),
    ]


def _ingestion(small: Service, big: Service, args: argparse.Namespace) -> list[Row]:
    """The same batches pushed to both databases in turn; records/s of each."""
    path = f"/v0/pipelines/{PIPELINE}/views/{VIEW}/changes"
    bodies = change_bodies(0, args.scale_records, args.batch)
    spent = {"small": 0.0, "big": 0.0}
    for index, body in enumerate(bodies):
        order = (("small", small), ("big", big)) if index % 2 else (("big", big), ("small", small))
        for name, service in order:
            started = time.perf_counter()
            service.call("POST", path, (200, 202), data=body, content_type="application/json")
            spent[name] += time.perf_counter() - started
    records = args.scale_records
    speed = {name: records / seconds for name, seconds in spent.items()}
    return [
        Row(
            "e",
            f"ingestion, small database ({args.batch}/batch)",
            speed["small"],
            "records/s",
            f"{records} records",
        ),
        Row(
            "e",
            f"ingestion, scale database ({args.batch}/batch)",
            speed["big"],
            "records/s",
            f"{speed['big'] / speed['small']:.2f}x the small database's records/s (target >= 0.80)",
        ),
    ]


def _delivery_and_log(
    small: Service, big: Service, args: argparse.Namespace, backlog: int
) -> list[Row]:
    """Deliver everything on both; then the change log's size once the worker is idle."""
    pushed = args.scale_records
    times = {}
    for name, service, records in (("small", small, pushed), ("big", big, backlog + pushed)):
        seconds, done = deliver_pushed(service, args.worker_seconds)
        if not done:
            raise RuntimeError(f"{name}: the changes were not delivered in {seconds:.0f}s")
        lines = count_lines(service.sink_path)
        if lines != records:
            raise RuntimeError(f"{name}: the sink holds {lines} lines, not {records}")
        times[name] = seconds
    progress("worker: the rest of its work, then compaction passes until one removes nothing")
    started = time.perf_counter()
    units = big.run_worker_until_idle(seconds=args.worker_seconds)
    big.compact_log(seconds=args.worker_seconds)
    spent = time.perf_counter() - started
    after, appended, lag = big.log_state()
    small.run_worker_until_idle(seconds=args.worker_seconds)
    small.compact_log(seconds=args.worker_seconds)
    small_rows, small_appended, small_lag = small.log_state()
    worker = (
        f"worker idle after {units} more units of work ({spent:.1f}s)"
        if spent <= 2 * args.worker_seconds
        else f"worker still busy after {spent:.0f}s (--worker-seconds)"
    )
    total = backlog + pushed
    return [
        Row(
            "e",
            f"stream delivery, small database: the {pushed:,} pushed records",
            pushed / times["small"],
            "records/s",
            f"{times['small']:.2f}s; sink checked",
        ),
        Row(
            "e",
            f"stream delivery, scale database: {total:,} records (backlog and pushed)",
            total / times["big"],
            "records/s",
            f"{times['big']:.1f}s; sink checked; "
            f"{(total / times['big']) / (pushed / times['small']):.2f}x the small database's "
            "records/s",
        ),
        Row(
            "e",
            "change log rows, small database, all delivered",
            small_rows,
            "rows",
            f"after {pushed:,} pushes; {log_note(small_rows, small_appended, small_lag)}",
        ),
        Row(
            "e",
            "change log rows, scale database, all delivered",
            after,
            "rows",
            f"after {total:,} pushes; {worker}; {log_note(after, appended, lag)}",
        ),
    ]
