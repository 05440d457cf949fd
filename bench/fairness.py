"""Tenants served in turn (section g): tenant B's work beside tenant A's big backlog.

Tenant A has one running pipeline of ``--fair-views`` views with
``--fair-connectors`` file connectors each (10,000 at full size): the pipeline
and its views are made through the API, the connectors inserted in one bulk
statement (the API would take minutes). Tenant B has one pipeline with one
view and one file connector, its view holding a few records. Then, over HTTP
as users would:

1. B's idle times: a push until its line is in B's sink, and a reset until
   reset_status says complete (median of a few each), A quiet;
2. A paused, one record pushed to each of A's views, A resumed (every one of
   A's connectors due at once), then B pushes: the time until B's line is in
   its sink. Target: within 2 s + 3x B's idle time;
3. A paused, ``--fair-resets`` resets of A's connectors queued, A resumed,
   then B resets its connector: the time until complete. Target: within 3 s +
   3x B's idle time.

Each also says how much of A's work was still waiting when B's was done, so
that a figure measured after A had drained shows as such.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import sqlalchemy as sa

from bench.measure import Row
from bench.probes import Api, SinkWatch, in_parallel, progress, push_latency, reset_to_complete
from bench.service import CONNECTOR, VIEW, Service, change_bodies

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
A_PIPELINE = "fair-a"
B_PIPELINE = "fair-b"
B_SINK = "fair-b.jsonl"
# Ids of the pushes of this section, clear of the others'.
FIRST_ID = 2_000_000_000


@dataclass
class Tenants:
    """What :func:`build` made: the two tenants' write keys and tenant A's shape."""

    a_key: str
    b_key: str
    views: int
    per_view: int
    resets: int


def build(service: Service, views: int, per_view: int, resets: int) -> Tenants:
    """Make tenant A's pipeline (connectors in bulk) and tenant B's, both running.

    ``resets``: how many of A's connectors :func:`measure` resets at once.
    """
    from app.connectors.models import Connector
    from app.extensions import db
    from app.pipelines.models import Pipeline, View
    from app.transports import get_transport

    a_key = service.new_key(TENANT_A, "write")
    b_key = service.new_key(TENANT_B, "write")
    a_client = service.client_with(a_key)
    names = [f"v{i}" for i in range(views)]
    service.make_pipeline(A_PIPELINE, names, client=a_client, start=False)
    with service.app.app_context():
        try:
            driver = get_transport("file")
            view_ids = dict(
                db.session.execute(
                    sa.select(View.name, View.id)
                    .join(Pipeline, Pipeline.id == View.pipeline_id)
                    .where(Pipeline.tenant == TENANT_A, Pipeline.name == A_PIPELINE)
                ).all()
            )
            rows = []
            for name in names:
                for j in range(per_view):
                    config = driver.validate_config({"path": f"{name}-s{j}.jsonl"}, tenant=TENANT_A)
                    rows.append(
                        {
                            "uid": uuid.uuid4(),
                            "view_id": view_ids[name],
                            "tenant": TENANT_A,
                            "name": f"s{j}",
                            "transport": "file",
                            "config": config,
                            "sink_key": driver.sink_key(config, TENANT_A),
                        }
                    )
            db.session.execute(sa.insert(Connector), rows)
            db.session.commit()
        finally:
            db.session.remove()
    service.call("POST", f"/v0/pipelines/{A_PIPELINE}/start", (200, 202), a_client)
    b_client = service.client_with(b_key)
    service.make_pipeline(B_PIPELINE, [VIEW], [(VIEW, CONNECTOR, B_SINK)], client=b_client)
    for body in change_bodies(0, 100, 100):  # a small snapshot for B's resets
        service.call(
            "POST",
            f"/v0/pipelines/{B_PIPELINE}/views/{VIEW}/changes",
            (200, 202),
            b_client,
            data=body,
            content_type="application/json",
        )
    return Tenants(a_key, b_key, views, per_view, min(resets, views * per_view))


def _a_behind(service: Service) -> int:
    """Tenant A's connectors that have changes to deliver."""
    return service.scalar(
        "SELECT count(*) FROM connectors c JOIN view_logs l ON l.view_id = c.view_id"
        " WHERE c.tenant = :tenant AND c.delivered_seq < l.last_seq",
        tenant=TENANT_A,
    )


def _a_resets(service: Service) -> int:
    """Tenant A's resets in progress."""
    return service.scalar(
        "SELECT count(*) FROM resets r JOIN connectors c ON c.id = r.connector_id"
        " WHERE c.tenant = :tenant AND r.status = 'inprogress'",
        tenant=TENANT_A,
    )


def _wait_zero(count: Callable[[], int], timeout: float) -> float:
    """Wait until ``count()`` is 0; return the seconds it took."""
    started = time.perf_counter()
    while count():
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"tenant A's work not done after {timeout:.0f}s")
        time.sleep(0.1)
    return time.perf_counter() - started


def _push_one(api: Api, view: str, record: int) -> None:
    api.push(A_PIPELINE, view, f'[{{"insert": {{"id": {record}}}}}]'.encode())


def _reset_one(api: Api, view: str, connector: str) -> None:
    api.request_reset(A_PIPELINE, view, connector)


def measure(service: Service, base: str, tenants: Tenants, samples: int) -> list[Row]:
    """Tenant B's push and reset, idle and beside tenant A's backlog; the rows of the figures."""
    a, b = Api(base, tenants.a_key), Api(base, tenants.b_key)
    sink = service.sink_file(TENANT_B, B_SINK)
    watch = SinkWatch(sink.parent)
    next_id = iter(range(FIRST_ID, FIRST_ID + 1_000_000))
    connectors = tenants.views * tenants.per_view
    timeout = max(600.0, connectors / 5)
    try:
        progress(f"fairness: tenant B idle, {samples} pushes and {samples} resets")
        idle_push = statistics.median(
            push_latency(b, B_PIPELINE, VIEW, sink, watch, next(next_id))[0]
            for _ in range(samples + 1)
        )
        idle_reset = statistics.median(
            reset_to_complete(b, B_PIPELINE, VIEW, CONNECTOR)[0] for _ in range(samples)
        )

        progress(f"fairness: {tenants.views} pushes to tenant A ({connectors:,} connectors due)")
        a.action(A_PIPELINE, "pause")
        pushes = [
            partial(_push_one, view=f"v{i}", record=next(next_id)) for i in range(tenants.views)
        ]
        in_parallel(base, tenants.a_key, pushes)
        started = time.perf_counter()
        a.action(A_PIPELINE, "resume")
        busy_push = push_latency(b, B_PIPELINE, VIEW, sink, watch, next(next_id))[0]
        behind = _a_behind(service)
        drained = time.perf_counter() - started + _wait_zero(lambda: _a_behind(service), timeout)

        progress(f"fairness: {tenants.resets:,} of tenant A's resets queued")
        a.action(A_PIPELINE, "pause")
        jobs = [
            partial(_reset_one, view=f"v{i % tenants.views}", connector=f"s{i // tenants.views}")
            for i in range(tenants.resets)
        ]
        in_parallel(base, tenants.a_key, jobs)
        started = time.perf_counter()
        a.action(A_PIPELINE, "resume")
        busy_reset, status = reset_to_complete(b, B_PIPELINE, VIEW, CONNECTOR)
        queued = _a_resets(service)
        resets_done = (
            time.perf_counter() - started + _wait_zero(lambda: _a_resets(service), timeout)
        )
    finally:
        watch.close()
    push_bound = 2 + 3 * idle_push
    reset_bound = 3 + 3 * idle_reset
    return [
        Row(
            "g",
            "fairness: tenant B's push -> sink, idle (baseline)",
            idle_push * 1000,
            "ms",
            f"median of {samples + 1}",
        ),
        Row(
            "g",
            f"fairness: tenant B's push -> sink, {connectors:,} of tenant A's connectors due",
            busy_push * 1000,
            "ms",
            f"{busy_push / idle_push:.1f}x idle; target <= 2 s + 3x idle = {push_bound:.2f} s: "
            f"{'met' if busy_push <= push_bound else 'NOT met'}; {behind:,} of A's connectors "
            f"still behind then; A drained in {drained:.1f}s",
        ),
        Row(
            "g",
            "fairness: tenant B's reset -> complete, idle (baseline)",
            idle_reset * 1000,
            "ms",
            f"median of {samples}; 100 records",
        ),
        Row(
            "g",
            f"fairness: tenant B's reset -> complete, {tenants.resets:,} of A's resets queued",
            busy_reset * 1000,
            "ms",
            f"{busy_reset / idle_reset:.1f}x idle; target <= 3 s + 3x idle = {reset_bound:.2f} s: "
            f"{'met' if busy_reset <= reset_bound else 'NOT met'} ({status['status']}); "
            f"{queued:,} of A's resets still in progress then; all done in {resets_done:.1f}s",
        ),
    ]
