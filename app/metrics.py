"""``GET /metrics``: the service's metrics in Prometheus' text format.

Two kinds of series, from two places:

- **Requests** are counted where they are served: one latency histogram by
  route template (the URL rule, never the raw path), method and status. Under
  gunicorn every worker process writes its samples to files in
  ``PROMETHEUS_MULTIPROC_DIR`` (``gunicorn.conf.py`` makes a fresh one per
  server start) and a scrape, answered by any worker, adds them all up.
  Without that variable (``pipeline-manager run``, tests) the process keeps its own.
- **Connectors, resets and change logs** are read from the database at scrape
  time: delivery, resets and ingestion are done by every gunicorn worker and
  every ``pipeline-manager worker`` process, on any number of hosts, and what they did is
  recorded there, in the transaction that does it. A process's memory would
  miss the other hosts' work, and would count a batch whose holder lost its
  lease (the database never records that batch).

The database series cost the same at 100 connectors as at 100,000:

- **Per-tenant totals** (connectors by state, what they delivered, their lag,
  views, resets) are aggregates grouped by tenant, always all present.
- **Per-connector and per-view series** list at most ``METRICS_MAX_ROWS``
  connectors and as many views: the ones that need attention first (see
  ``_attention`` and ``_view_order``), then by name. A scrape of every tenant
  splits that budget fairly (:func:`fair_shares`), so one tenant's many
  connectors never hide another's. ``metrics_truncated`` says when rows are
  left out.
- The text of those series is kept ``METRICS_CACHE_SECONDS`` per process and
  per scope (one tenant, or every tenant), and concurrent scrapes of one scope
  wait for one computation (:class:`ScrapeCache`). The request histogram is
  read afresh every time: it costs a few files' read, not a query.

Who may scrape: ``METRICS_PUBLIC`` (default off). Otherwise a credential with
the ``read`` role, whose scrape shows the database series of its own tenant
only; a credential of ``METRICS_OPERATOR_TENANT`` sees every tenant's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from time import perf_counter
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, current_app, request
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.exc import SQLAlchemyError

from app.connectors.models import Connector, SyncState
from app.database import db_time
from app.delivery.models import WorkerProcess
from app.delivery.service import Health, health
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetStatus
from app.view_data.models import ViewChange, ViewLog

log = logging.getLogger(__name__)

PREFIX = "pipeline_manager"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Sub-millisecond first: GET reset_status answers in a few hundred microseconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Label values must stay bounded: a client can send any method, any path.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
_STARTED = "pipeline_manager.started"
# The text format every Prometheus reads (what generate_latest writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Where init_app keeps the app's ScrapeCache (app.extensions).
CACHE_EXTENSION = "pipeline_manager.metrics_cache"

# No ``*_created`` series: multiprocess mode has none, so neither has the single-process one.
disable_created_metrics()

REQUESTS = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Requests served, by route template, method and status, and how long each took.",
    ("route", "method", "status"),
    buckets=LATENCY_BUCKETS,
    registry=None,
)
# The histogram's children by (route, method, status): resolving labels once,
# not per request, leaves a dict look-up and one observe on the hot path.
_children: dict[tuple[str, str, int], Any] = {}


class _StartClock:
    """WSGI middleware that notes when a request came in, before anything else runs."""

    def __init__(self, wsgi_app: Callable) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        environ[_STARTED] = perf_counter()
        return self.wsgi_app(environ, start_response)


def _observe(response: Response) -> Response:
    """Count the request in the latency histogram (an ``after_request`` hook).

    On the path of every request, ``GET reset_status`` included (``make bench``
    section a): a tuple, a dict look-up and one observe, a few microseconds;
    tests/test_metrics.py measures it against /healthz.
    """
    # The request object itself, once: each access through the proxy costs more
    # than the rest of this function.
    req = request._get_current_object()  # type: ignore[attr-defined]
    rule = req.url_rule
    method = req.method
    observe_request(
        UNMATCHED_ROUTE if rule is None else rule.rule,
        method if method in KNOWN_METHODS else "other",
        response.status_code,
        perf_counter() - req.environ[_STARTED],
    )
    return response


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one request of a route template, method and status that took ``seconds``."""
    key = (route, method, status)
    child = _children.get(key)
    if child is None:
        child = _children.setdefault(key, REQUESTS.labels(*key))
    child.observe(seconds)


# -- the budget ------------------------------------------------------------------------------


def fair_shares(counts: dict[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` rows among tenants that have ``counts[tenant]`` rows each.

    Max-min fair: every tenant gets an equal share, a tenant that needs less
    gets what it has, and what it leaves goes to the others; the whole budget
    is spent while any tenant has more. Deterministic: tenants are served from
    the smallest count up (then by name), each the rows left divided by the
    tenants left, so the rounding's odd rows go to the biggest tenants (ties:
    the last by name). tests/test_metrics.py checks these properties.
    """
    shares: dict[str, int] = {}
    left = max(0, budget)
    order = sorted(counts, key=lambda tenant: (counts[tenant], tenant))
    for i, tenant in enumerate(order):
        shares[tenant] = min(counts[tenant], left // (len(order) - i))
        left -= shares[tenant]
    return shares


# -- the database series: queries -------------------------------------------------------------

_CONNECTOR_LABELS = ("tenant", "pipeline", "view", "connector")
_VIEW_LABELS = ("tenant", "pipeline", "view")
# Above this many tenants cut by the budget, one ranking statement lists them
# all rather than a part of a UNION ALL each (see _listed).
_CUT_TENANTS = 32


def _log_end() -> sa.ColumnElement[int]:
    """The connector's (or view's) log end: 0 for a view whose log never began."""
    return sa.func.coalesce(ViewLog.last_seq, 0)


def _lag() -> sa.ColumnElement[int]:
    """A connector's lag: its view's log end minus its delivered seq, never below 0."""
    behind = _log_end() - Connector.delivered_seq
    return sa.case((behind > 0, behind), else_=0)


def _health() -> sa.ColumnElement[str]:
    """``app.delivery.service.health`` in SQL, so that totals by state need no rows."""
    return sa.case(
        (Pipeline.status == PipelineStatus.STOPPED, Health.STOPPED),
        (
            sa.or_(Pipeline.status == PipelineStatus.PAUSED, Connector.paused.is_(True)),
            Health.PAUSED,
        ),
        (Connector.sync_state == SyncState.FAILED, Health.FAILED),
        (Connector.sync_state == SyncState.RESETTING, Health.RESETTING),
        (Connector.consecutive_failures > 0, Health.FAILING),
        else_=Health.HEALTHY,
    )


def _attention() -> list[sa.ColumnElement[Any]]:
    """Which connectors a scrape lists first: those an operator has to look at.

    Given up on (``failed``), then owing a snapshot (``resetting``), then
    failing deliveries, then lagging, then the rest; within each, by pipeline,
    view and connector name. Names, not lag or error times, break the ties so
    that the listed set stays the same from one scrape to the next (Prometheus
    keeps every series it ever saw for a while: churn costs it memory).
    """
    rank = sa.case(
        (Connector.sync_state == SyncState.FAILED, 0),
        (Connector.sync_state == SyncState.RESETTING, 1),
        (Connector.consecutive_failures > 0, 2),
        (_log_end() > Connector.delivered_seq, 3),
        else_=4,
    )
    return [rank, Pipeline.name, View.name, Connector.name]


def _view_order() -> list[sa.ColumnElement[Any]]:
    """Which views a scrape lists first: the longest uncompacted logs, then by name.

    A log compaction cannot shorten is the one that fills the disk.
    """
    held = sa.func.coalesce(ViewLog.last_seq - ViewLog.compacted_seq, 0)
    return [held.desc(), Pipeline.name, View.name]


def _scoped(query: sa.Select, tenant: str | None) -> sa.Select:
    """``query`` for one tenant (``pipelines.tenant`` is indexed), or as is for every tenant."""
    return query if tenant is None else query.where(Pipeline.tenant == tenant)


def _count(condition: sa.ColumnElement[bool], name: str) -> sa.Label[Any]:
    """How many rows of the group meet ``condition``."""
    return sa.func.sum(sa.case((condition, 1), else_=0)).label(name)


def _connector_totals_query(tenant: str | None) -> sa.Select:
    """One row per tenant: its connectors by state and the sums of their counters.

    One pass over the tenant's connectors, joined to their views and log
    heads, grouped by tenant: no row leaves the database.
    """
    state = _health()
    lease_expired = sa.and_(
        Connector.lease_owner.is_not(None), Connector.lease_expires_at < db_time()
    )
    query = (
        sa.select(
            Pipeline.tenant,
            sa.func.count().label("connectors"),
            *(_count(state == name, f"health_{name}") for name in Health.ALL),
            *(_count(Connector.sync_state == name, f"sync_{name}") for name in SyncState.ALL),
            _count(Connector.paused.is_(True), "paused"),
            _count(lease_expired, "leases_expired"),
            sa.func.sum(Connector.transmitted_records).label("records"),
            sa.func.sum(Connector.transmitted_bytes).label("bytes"),
            sa.func.sum(Connector.transport_errors).label("errors"),
            sa.func.sum(Connector.lease_takeovers).label("takeovers"),
            sa.func.sum(_lag()).label("lag"),
            sa.func.sum(Connector.resets_completed).label("resets_complete"),
            sa.func.sum(Connector.resets_failed).label("resets_failed"),
            sa.func.sum(Connector.resets_abandoned).label("resets_abandoned"),
            sa.func.sum(Connector.resets_cancelled).label("resets_cancelled"),
            sa.func.sum(Connector.replayed_records).label("replayed"),
        )
        .select_from(Connector)
        .join(View, View.id == Connector.view_id)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .outerjoin(ViewLog, ViewLog.view_id == Connector.view_id)
        .group_by(Pipeline.tenant)
    )
    return _scoped(query, tenant)


def _view_totals_query(tenant: str | None) -> sa.Select:
    """One row per tenant: its views, the changes pushed to them, and what their logs hold."""
    query = (
        sa.select(
            Pipeline.tenant,
            sa.func.count().label("views"),
            sa.func.sum(_log_end()).label("changes"),
            sa.func.sum(sa.func.coalesce(ViewLog.last_seq - ViewLog.compacted_seq, 0)).label(
                "held"
            ),
        )
        .select_from(View)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .outerjoin(ViewLog, ViewLog.view_id == View.id)
        .group_by(Pipeline.tenant)
    )
    return _scoped(query, tenant)


def _connector_rows_query(tenant: str | None) -> sa.Select:
    """Each connector's counters and position, and its view's log end (one row each)."""
    query = (
        sa.select(
            Pipeline.tenant,
            Pipeline.name.label("pipeline"),
            Pipeline.status,
            View.name.label("view"),
            Connector.name.label("connector"),
            Connector.sync_state,
            Connector.paused,
            Connector.consecutive_failures,
            Connector.transmitted_records,
            Connector.transmitted_bytes,
            Connector.transport_errors,
            Connector.delivered_seq,
            Connector.last_error_at,
            Connector.last_delivered_at,
            Connector.lease_takeovers,
            _log_end().label("log_end"),
        )
        .select_from(Connector)
        .join(View, View.id == Connector.view_id)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .outerjoin(ViewLog, ViewLog.view_id == Connector.view_id)
    )
    return _scoped(query, tenant)


def _view_rows_query(tenant: str | None) -> sa.Select:
    """Each view's names and log end (one row each)."""
    query = (
        sa.select(
            View.id.label("view_id"),
            Pipeline.tenant,
            Pipeline.name.label("pipeline"),
            View.name.label("view"),
            _log_end().label("log_end"),
        )
        .select_from(View)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .outerjoin(ViewLog, ViewLog.view_id == View.id)
    )
    return _scoped(query, tenant)


def _listed(
    query: sa.Select, order: list[sa.ColumnElement[Any]], counts: dict, shares: dict
) -> sa.Select | sa.CompoundSelect | None:
    """The rows of ``query`` a scrape lists: each tenant's first ``shares[tenant]`` by ``order``.

    The tenants the budget does not cut come whole, in one part. Each cut
    tenant is an ``ORDER BY ... LIMIT`` of its own on the tenant index: a
    top-N sort of that tenant's rows, about a third of a full sort's cost at
    100,000 (``python -m bench.metrics_scale``). The parts are one ``UNION
    ALL``. With more than ``_CUT_TENANTS`` tenants cut, one statement ranks
    them all instead (``row_number() OVER (PARTITION BY tenant ...)``, SQLite
    3.25+ and PostgreSQL), up to ``max(shares)`` rows each with their
    ``rank``: :func:`_trimmed` keeps each tenant's share of those.
    """
    if not any(shares.values()):
        return None
    cut = sorted(tenant for tenant in counts if shares[tenant] < counts[tenant])
    if len(cut) > _CUT_TENANTS:
        rank = sa.func.row_number().over(partition_by=Pipeline.tenant, order_by=order)
        ranked = query.add_columns(rank.label("rank")).subquery()
        return sa.select(ranked).where(ranked.c.rank <= max(shares.values()))
    parts = [
        query.where(Pipeline.tenant == tenant).order_by(*order).limit(shares[tenant])
        for tenant in cut
        if shares[tenant]
    ]
    whole = sum(shares[tenant] for tenant in counts if tenant not in cut)
    if whole:
        # The limit only guards against rows added since the totals were read.
        parts.append((query.where(Pipeline.tenant.not_in(cut)) if cut else query).limit(whole))
    if len(parts) == 1:
        return parts[0]
    return sa.union_all(*(sa.select(part.subquery()) for part in parts))


def _trimmed(rows: list[sa.Row], shares: dict[str, int]) -> list[sa.Row]:
    """Each tenant's share of the rows :func:`_listed` returned (ranked rows only need it)."""
    if not rows or "rank" not in rows[0]._fields:
        return rows
    return [row for row in rows if row.rank <= shares.get(row.tenant, 0)]


def _with_oldest(listed: sa.Select | sa.CompoundSelect) -> sa.Select:
    """Add each listed view's oldest retained change seq.

    A correlated ``min`` on purpose, over the listed views only: it is one
    index seek per view on ``view_changes``' primary key (view, seq), where a
    ``GROUP BY view_id`` would read every retained change.
    """
    views = listed.subquery()
    oldest = (
        sa.select(sa.func.min(ViewChange.seq))
        .where(ViewChange.view_id == views.c.view_id)
        .scalar_subquery()
    )
    return sa.select(views, oldest.label("oldest"))


def _resets_query(tenant: str | None) -> sa.Select:
    """Resets in progress by tenant and phase (the finished ones are the connectors' counters).

    Reads the resets in progress only (the ``(status, phase)`` index), never
    the history: a million finished resets cost a scrape nothing.
    """
    query = (
        sa.select(Pipeline.tenant, Reset.phase, sa.func.count().label("count"))
        .join(Pipeline, Pipeline.id == Reset.pipeline_id)
        .where(Reset.status == ResetStatus.IN_PROGRESS)
        .group_by(Pipeline.tenant, Reset.phase)
    )
    return _scoped(query, tenant)


# -- the database series: families -----------------------------------------------------------


def _family(kind: type, name: str, documentation: str, labels: Iterable[str]) -> Metric:
    """A metric family named with the service's prefix."""
    return kind(f"{PREFIX}_{name}", documentation, labels=list(labels))


def _gauge(name: str, documentation: str, labels: Iterable[str] = ("tenant",)) -> Metric:
    """A gauge family (by tenant unless told)."""
    return _family(GaugeMetricFamily, name, documentation, labels)


def _counter(name: str, documentation: str, labels: Iterable[str] = ("tenant",)) -> Metric:
    """A counter family (by tenant unless told)."""
    return _family(CounterMetricFamily, name, documentation, labels)


class DatabaseCollector:
    """The connector, reset and change-log series, read from the database at scrape time.

    ``tenant`` None: every tenant's; else that tenant's only. ``limit``: the
    most connectors, and views, listed one by one (see the module docstring).
    ``answered`` says, after a collect, whether the database answered.
    """

    def __init__(self, tenant: str | None, limit: int) -> None:
        self.tenant = tenant
        self.limit = max(0, limit)
        self.answered = False

    def collect(self) -> Iterator[Metric]:
        """Run the queries and yield every family; on a database error, only ``database_up 0``."""
        up = _gauge("database_up", "1 if the database answered this scrape.", ())
        try:
            families = list(self._families())
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.warning("metrics: the database did not answer: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        finally:
            db.session.remove()
        self.answered = True
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        """Totals first (always all), then the listed connectors and views, resets, the cut."""
        session = db.session
        connectors = {r.tenant: r for r in session.execute(_connector_totals_query(self.tenant))}
        views = {r.tenant: r for r in session.execute(_view_totals_query(self.tenant))}
        resets = session.execute(_resets_query(self.tenant)).all()

        connector_counts = {tenant: int(row.connectors) for tenant, row in connectors.items()}
        view_counts = {tenant: int(row.views) for tenant, row in views.items()}
        connector_shares = fair_shares(connector_counts, self.limit)
        view_shares = fair_shares(view_counts, self.limit)

        listed = _listed(
            _connector_rows_query(self.tenant), _attention(), connector_counts, connector_shares
        )
        connector_rows = [] if listed is None else session.execute(listed).all()
        listed = _listed(_view_rows_query(self.tenant), _view_order(), view_counts, view_shares)
        view_rows = [] if listed is None else session.execute(_with_oldest(listed)).all()

        # A tenant's own scrape shows its totals even before it has any connector.
        tenants = sorted({*connectors, *views, *([self.tenant] if self.tenant else [])})
        yield from self._totals(tenants, connectors, views)
        yield from self._connector_families(_trimmed(connector_rows, connector_shares))
        yield from self._view_families(_trimmed(view_rows, view_shares))
        yield from self._reset_families(resets, tenants, connectors)
        yield from self._cut(tenants, connector_counts, connector_shares, view_counts, view_shares)
        yield from self._worker_families()

    @staticmethod
    def _worker_families() -> Iterator[Metric]:
        """The worker processes alive (a heartbeat within a lease) and how far ahead a clock runs.

        On SQLite each process writes its heartbeat by its own clock: one that
        runs fast shows as a heartbeat ahead of the scraper's now (its leases
        count as run out, see app.delivery.leases). Nothing of any tenant's.
        """
        lease = float(current_app.config["WORKER_LEASE_SECONDS"])
        count, latest, now = db.session.execute(
            sa.select(
                sa.func.count(WorkerProcess.id), sa.func.max(WorkerProcess.heartbeat_at), db_time()
            ).where(WorkerProcess.heartbeat_at > db_time(-lease))
        ).one()
        alive = _gauge(
            "worker_processes", "Worker processes whose heartbeat is within a lease.", ()
        )
        alive.add_metric([], int(count))
        yield alive
        ahead = _gauge(
            "worker_clock_ahead_seconds",
            "How far the fastest worker process's clock runs ahead of this one's (SQLite; "
            "0 on PostgreSQL, whose clock is the server's).",
            (),
        )
        seconds = 0.0 if latest is None else (latest - now).total_seconds()
        ahead.add_metric([], max(0.0, seconds))
        yield ahead

    @staticmethod
    def _totals(tenants: list[str], connectors: dict, views: dict) -> Iterator[Metric]:
        """The per-tenant totals, present whatever the budget (0 for a tenant with none)."""
        by_state = _gauge(
            "tenant_connectors",
            "Connectors by state, as their stats route's health says.",
            ("tenant", "state"),
        )
        by_sync = _gauge(
            "tenant_connectors_sync_state",
            "Connectors by sync state: in_sync, resetting (a snapshot is owed), failed.",
            ("tenant", "sync_state"),
        )
        paused = _gauge("tenant_connectors_paused", "Connectors paused by an operator.")
        expired = _gauge(
            "connector_leases_expired",
            "Connectors whose lease holder let the lease run out (a process that died or "
            "stalled): each one is taken over by the next worker that comes round.",
        )
        records = _counter(
            "tenant_delivered_records", "Records delivered by the tenant's connectors."
        )
        size = _counter("tenant_delivered_bytes", "Bytes delivered by the tenant's connectors.")
        errors = _counter(
            "tenant_transport_errors", "Failed deliveries of the tenant's connectors."
        )
        takeovers = _counter(
            "tenant_lease_takeovers", "Leases of the tenant's connectors taken over."
        )
        lag = _gauge(
            "tenant_lag_records", "Changes the tenant's connectors have yet to deliver, summed."
        )
        view_count = _gauge("tenant_views", "Views of the tenant's pipelines.")
        changes = _counter("tenant_view_changes", "Changes pushed to the tenant's views.")
        held = _gauge(
            "tenant_view_change_log_records",
            "Changes the tenant's view logs hold: log end minus compacted seq, summed.",
        )
        for tenant in tenants:
            row = connectors.get(tenant)
            for name in Health.ALL:
                by_state.add_metric([tenant, name], _int(row, f"health_{name}"))
            for name in SyncState.ALL:
                by_sync.add_metric([tenant, name], _int(row, f"sync_{name}"))
            paused.add_metric([tenant], _int(row, "paused"))
            expired.add_metric([tenant], _int(row, "leases_expired"))
            records.add_metric([tenant], _int(row, "records"))
            size.add_metric([tenant], _int(row, "bytes"))
            errors.add_metric([tenant], _int(row, "errors"))
            takeovers.add_metric([tenant], _int(row, "takeovers"))
            lag.add_metric([tenant], _int(row, "lag"))
            row = views.get(tenant)
            view_count.add_metric([tenant], _int(row, "views"))
            changes.add_metric([tenant], _int(row, "changes"))
            held.add_metric([tenant], max(0, _int(row, "held")))
        yield from (by_state, by_sync, paused, expired, records, size, errors, takeovers, lag)
        yield from (view_count, changes, held)

    @staticmethod
    def _connector_families(rows: list[sa.Row]) -> Iterator[Metric]:
        """One series per listed connector and family."""
        labels = _CONNECTOR_LABELS
        records = _counter(
            "connector_delivered_records",
            "Records delivered to the sink, streamed and replayed by resets.",
            labels,
        )
        size = _counter(
            "connector_delivered_bytes",
            "Bytes delivered to the sink (the JSON lines or http bodies).",
            labels,
        )
        errors = _counter(
            "connector_transport_errors",
            "Deliveries that failed (each is retried with backoff).",
            labels,
        )
        lag = _gauge(
            "connector_lag_records",
            "Changes in the view's log not yet delivered: log end minus delivered seq.",
            labels,
        )
        failures = _gauge(
            "connector_consecutive_failures",
            "Failed deliveries in a row (0 after a success).",
            labels,
        )
        last_error = _gauge(
            "connector_last_error_timestamp_seconds",
            "When the last delivery or reset of the connector failed (Unix time); absent if never.",
            labels,
        )
        takeovers = _counter(
            "connector_lease_takeovers",
            "Times a worker took the connector's lease over from a holder that let it run out "
            "(a process that died or stalled past its lease).",
            labels,
        )
        last_success = _gauge(
            "connector_last_success_timestamp_seconds",
            "When the connector's last batch was delivered (Unix time, database clock); "
            "absent if never.",
            labels,
        )
        state = _gauge(
            "connector_state",
            "1 for the state the connector is in (as its stats route's health), 0 for the others.",
            (*labels, "state"),
        )
        for row in sorted(rows, key=lambda r: (r.tenant, r.pipeline, r.view, r.connector)):
            values = [row.tenant, row.pipeline, row.view, row.connector]
            records.add_metric(values, row.transmitted_records)
            size.add_metric(values, row.transmitted_bytes)
            errors.add_metric(values, row.transport_errors)
            lag.add_metric(values, max(0, row.log_end - row.delivered_seq))
            failures.add_metric(values, row.consecutive_failures)
            if row.last_error_at is not None:
                last_error.add_metric(values, row.last_error_at.timestamp())
            takeovers.add_metric(values, row.lease_takeovers)
            if row.last_delivered_at is not None:
                last_success.add_metric(values, row.last_delivered_at.timestamp())
            current = health(row, row)
            for name in Health.ALL:
                state.add_metric([*values, name], int(name == current))
        yield from (records, size, errors, lag, failures, last_error, last_success, takeovers)
        yield state

    @staticmethod
    def _view_families(rows: list[sa.Row]) -> Iterator[Metric]:
        """One series per listed view and family."""
        end = _counter(
            "view_changes", "Changes pushed to the view (its change log's end seq).", _VIEW_LABELS
        )
        retained = _gauge(
            "view_change_log_records",
            "Changes the view's log holds: its end seq minus its oldest retained seq, plus one "
            "(an upper bound where compaction left gaps).",
            _VIEW_LABELS,
        )
        for row in sorted(rows, key=lambda r: (r.tenant, r.pipeline, r.view)):
            values = [row.tenant, row.pipeline, row.view]
            end.add_metric(values, row.log_end)
            held = 0 if row.oldest is None else row.log_end - row.oldest + 1
            retained.add_metric(values, max(0, held))
        yield from (end, retained)

    @staticmethod
    def _reset_families(
        rows: list[sa.Row], tenants: list[str], connectors: dict
    ) -> Iterator[Metric]:
        """Resets by tenant, status and phase, and the records they replayed by tenant.

        Those in progress are counted by phase; the finished ones are the
        connectors' counters (``done`` for the complete, ``ended`` for the failed
        and the abandoned), so the history costs a scrape nothing.
        """
        resets = _gauge(
            "resets",
            "Resets by status and phase (finished ones: complete in phase 'done', failed, "
            "abandoned and cancelled in phase 'ended').",
            ("tenant", "status", "phase"),
        )
        replayed = _counter(
            "reset_replayed_records",
            "Snapshot records replayed by resets (rate() of it is the replay rate).",
        )
        for row in rows:
            resets.add_metric([row.tenant, ResetStatus.IN_PROGRESS, row.phase], row.count)
        for tenant in tenants:
            totals = connectors.get(tenant)
            finished = (
                (ResetStatus.COMPLETE, "done", "resets_complete"),
                (ResetStatus.FAILED, "ended", "resets_failed"),
                (ResetStatus.ABANDONED, "ended", "resets_abandoned"),
                (ResetStatus.CANCELLED, "ended", "resets_cancelled"),
            )
            for status, phase, column in finished:
                count = 0 if totals is None else int(getattr(totals, column) or 0)
                resets.add_metric([tenant, status, phase], count)
            replayed.add_metric([tenant], 0 if totals is None else int(totals.replayed or 0))
        yield from (resets, replayed)

    @staticmethod
    def _cut(
        tenants: list[str],
        connector_counts: dict[str, int],
        connector_shares: dict[str, int],
        view_counts: dict[str, int],
        view_shares: dict[str, int],
    ) -> Iterator[Metric]:
        """Say what the budget left out: in all, and per tenant."""
        listed = _gauge(
            "metrics_listed_connectors",
            "Connectors this scrape lists one by one (the tenant's share of METRICS_MAX_ROWS).",
        )
        by_tenant = _gauge(
            "metrics_tenant_truncated",
            "1 if some of the tenant's connectors or views are left out of this scrape.",
        )
        anywhere = 0
        for tenant in tenants:
            cut = connector_counts.get(tenant, 0) > connector_shares.get(tenant, 0) or (
                view_counts.get(tenant, 0) > view_shares.get(tenant, 0)
            )
            anywhere |= cut
            listed.add_metric([tenant], connector_shares.get(tenant, 0))
            by_tenant.add_metric([tenant], int(cut))
        flag = _gauge(
            "metrics_truncated",
            "1 if this scrape leaves some connectors or views out (METRICS_MAX_ROWS).",
            (),
        )
        flag.add_metric([], int(anywhere))
        yield from (listed, by_tenant, flag)


def _int(row: sa.Row | None, name: str) -> int:
    """A total of a totals row as an int (PostgreSQL's sum is a Decimal; no row: 0)."""
    if row is None:
        return 0
    return int(getattr(row, name) or 0)


# -- the cache -------------------------------------------------------------------------------


class _Flight:
    """One computation of a scope's text under way; scrapes of that scope wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.body: bytes | None = None


class ScrapeCache:
    """The database series' text by scope, kept a few seconds, computed once at a time per scope.

    Per process: each gunicorn worker keeps its own (a scrape it answers from
    its cache is at most ``seconds`` old). A scope is a tenant, or None for
    every tenant, with the budget: scopes never share an entry, so a tenant
    never sees another's text. Expired entries go at the next store, so the
    cache holds what was scraped in the last ``seconds`` and no more.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, bytes]] = {}
        self._flights: dict[Hashable, _Flight] = {}

    def get(
        self, key: Hashable, seconds: float, compute: Callable[[], tuple[bytes, bool]]
    ) -> bytes:
        """The text of ``key``: cached if younger than ``seconds``, else from ``compute``.

        ``compute`` returns the text and whether it may be kept (a database
        that did not answer is asked again by the next scrape). While it runs,
        other scrapes of ``key`` wait and get its text rather than each running
        the queries again; if it raises, each of them tries again itself.
        """
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0] > self.clock():
                    return entry[1]
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    break
            flight.done.wait()
            if flight.body is not None:
                return flight.body
        keep = False
        try:
            flight.body, keep = compute()
        finally:
            with self._lock:
                del self._flights[key]
                if keep and seconds > 0 and flight.body is not None:
                    now = self.clock()
                    for stale in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                        del self._entries[stale]
                    self._entries[key] = (now + seconds, flight.body)
            flight.done.set()
        return flight.body

    def clear(self) -> None:
        """Forget every entry (the next scrape of each scope computes afresh)."""
        with self._lock:
            self._entries.clear()


# -- the route -------------------------------------------------------------------------------


def scrape_tenant() -> str | None:
    """The tenant whose database series this scrape may see (None: every tenant's).

    Raises the usual 401 (or 403) when ``METRICS_PUBLIC`` is off and the
    request's credential does not allow reading.
    """
    from app.auth.guard import authenticate
    from app.auth.models import Role
    from app.errors import InsufficientPermissions

    config = current_app.config
    if config["METRICS_PUBLIC"]:
        return None
    principal = authenticate()
    if not Role.allows(principal.role, Role.READ):
        raise InsufficientPermissions(
            "Reading /metrics needs the 'read' role",
            details={"required_role": Role.READ, "role": principal.role},
        )
    operator = config["METRICS_OPERATOR_TENANT"]
    return None if operator and principal.tenant == operator else principal.tenant


def database_text(tenant: str | None, limit: int) -> tuple[bytes, bool]:
    """The database series of a scope in the text format, and whether the database answered."""
    collector = DatabaseCollector(tenant, limit)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry), collector.answered


def requests_text() -> bytes:
    """The request histogram in the text format: every worker's under gunicorn, else this one's."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(REQUESTS)
    return generate_latest(registry)


def metrics_view() -> Response:
    """Answer a scrape: this process's (or every worker's) requests, and the database series."""
    tenant = scrape_tenant()
    config = current_app.config
    limit = int(config["METRICS_MAX_ROWS"])
    cache: ScrapeCache = current_app.extensions[CACHE_EXTENSION]
    database = cache.get(
        (tenant, limit),
        float(config["METRICS_CACHE_SECONDS"]),
        lambda: database_text(tenant, limit),
    )
    # Two expositions back to back are one: no family is in both.
    return Response(
        requests_text() + database,
        mimetype=None,
        content_type=CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


def init_app(app: Flask) -> None:
    """Time every request and serve ``GET /metrics`` (kept out of the OpenAPI document)."""
    app.wsgi_app = _StartClock(app.wsgi_app)
    app.after_request(_observe)
    app.extensions[CACHE_EXTENSION] = ScrapeCache()
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges from the multiprocess directory (gunicorn's child_exit)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
