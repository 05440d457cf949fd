"""``GET /metrics``: the service's metrics in Prometheus' text format.

Two kinds of series, from two places:

- **Requests** are counted where they are served: one latency histogram by
  route template (the URL rule, never the raw path), method and status. Under
  gunicorn every worker process writes its samples to files in
  ``PROMETHEUS_MULTIPROC_DIR`` (``gunicorn.conf.py`` makes a fresh one per
  server start) and a scrape, answered by any worker, adds them all up.
  Without that variable (``flask run``, tests) the process keeps its own.
- **Connectors, resets and change logs** are read from the database at scrape
  time, a few bounded queries: delivery, resets and ingestion are done by
  every gunicorn worker and every ``flask worker`` process, on any number of
  hosts, and what they did is recorded there, in the transaction that does it.
  A process's memory would miss the other hosts' work, and would count a batch
  whose holder lost its lease (the database never records that batch).

Who may scrape: ``METRICS_PUBLIC`` (default off). Otherwise a credential with
the ``read`` role, whose scrape shows the database series of its own tenant
only; a credential of ``METRICS_OPERATOR_TENANT`` sees every tenant's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
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

from app.connectors.models import Connector
from app.database import db_time
from app.delivery.service import Health, health
from app.extensions import db
from app.pipelines.models import Pipeline, View
from app.resets.models import Reset
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
    key = (
        UNMATCHED_ROUTE if rule is None else rule.rule,
        method if method in KNOWN_METHODS else "other",
        response.status_code,
    )
    child = _children.get(key)
    if child is None:
        child = _children.setdefault(key, REQUESTS.labels(*key))
    child.observe(perf_counter() - req.environ[_STARTED])
    return response


# -- the database series ---------------------------------------------------------------------

_CONNECTOR_LABELS = ("tenant", "pipeline", "view", "connector")
_VIEW_LABELS = ("tenant", "pipeline", "view")


def _connectors_query(tenant: str | None, limit: int) -> sa.Select:
    """Each connector's counters and position, and its view's log end (one row each)."""
    lease_expired = sa.and_(
        Connector.lease_owner.is_not(None), Connector.lease_expires_at < db_time()
    ).label("lease_expired")
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
            sa.func.coalesce(ViewLog.last_seq, 0).label("log_end"),
            lease_expired,
        )
        .join(View, View.id == Connector.view_id)
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .outerjoin(ViewLog, ViewLog.view_id == Connector.view_id)
        .order_by(Connector.id)
        .limit(limit)
    )
    return query if tenant is None else query.where(Pipeline.tenant == tenant)


def _views_query(tenant: str | None, limit: int) -> sa.Select:
    """Each view's log end and oldest retained change (an index seek per view)."""
    oldest = (
        sa.select(sa.func.min(ViewChange.seq))
        .where(ViewChange.view_id == View.id)
        .scalar_subquery()
    )
    query = (
        sa.select(
            Pipeline.tenant,
            Pipeline.name.label("pipeline"),
            View.name.label("view"),
            sa.func.coalesce(ViewLog.last_seq, 0).label("log_end"),
            oldest.label("oldest"),
        )
        .join(Pipeline, Pipeline.id == View.pipeline_id)
        .outerjoin(ViewLog, ViewLog.view_id == View.id)
        .order_by(View.id)
        .limit(limit)
    )
    return query if tenant is None else query.where(Pipeline.tenant == tenant)


def _resets_query(tenant: str | None) -> sa.Select:
    """Resets by tenant, status and phase: how many, and the records they replayed."""
    query = (
        sa.select(
            Pipeline.tenant,
            Reset.status,
            Reset.phase,
            sa.func.count().label("count"),
            sa.func.coalesce(sa.func.sum(Reset.replayed_records), 0).label("replayed"),
        )
        .join(Pipeline, Pipeline.id == Reset.pipeline_id)
        .group_by(Pipeline.tenant, Reset.status, Reset.phase)
    )
    return query if tenant is None else query.where(Pipeline.tenant == tenant)


def _family(kind: type, name: str, documentation: str, labels: Iterable[str]) -> Metric:
    return kind(f"{PREFIX}_{name}", documentation, labels=list(labels))


class DatabaseCollector:
    """The connector, reset and change-log series, read from the database at scrape time.

    ``tenant`` None: every tenant's; else that tenant's only. At most ``limit``
    connectors and ``limit`` views are listed (``metrics_truncated`` says so).
    """

    def __init__(self, tenant: str | None, limit: int) -> None:
        self.tenant = tenant
        self.limit = limit

    def collect(self) -> Iterator[Metric]:
        """Run the queries and yield every family; on a database error, only ``database_up 0``."""
        up = _family(
            GaugeMetricFamily, "database_up", "1 if the database answered this scrape.", ()
        )
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
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        session = db.session
        connectors = session.execute(_connectors_query(self.tenant, self.limit + 1)).all()
        views = session.execute(_views_query(self.tenant, self.limit + 1)).all()
        resets = session.execute(_resets_query(self.tenant)).all()
        truncated = len(connectors) > self.limit or len(views) > self.limit
        yield from self._connector_families(connectors[: self.limit])
        yield from self._view_families(views[: self.limit])
        yield from self._reset_families(resets)
        flag = _family(
            GaugeMetricFamily,
            "metrics_truncated",
            "1 if there were more connectors or views than METRICS_MAX_ROWS and some are left out.",
            (),
        )
        flag.add_metric([], int(truncated))
        yield flag

    @staticmethod
    def _connector_families(rows: list[sa.Row]) -> Iterator[Metric]:
        labels = _CONNECTOR_LABELS
        records = _family(
            CounterMetricFamily,
            "connector_delivered_records",
            "Records delivered to the sink, streamed and replayed by resets.",
            labels,
        )
        size = _family(
            CounterMetricFamily,
            "connector_delivered_bytes",
            "Bytes delivered to the sink (the JSON lines or http bodies).",
            labels,
        )
        errors = _family(
            CounterMetricFamily,
            "connector_transport_errors",
            "Deliveries that failed (each is retried with backoff).",
            labels,
        )
        lag = _family(
            GaugeMetricFamily,
            "connector_lag_records",
            "Changes in the view's log not yet delivered: log end minus delivered seq.",
            labels,
        )
        failures = _family(
            GaugeMetricFamily,
            "connector_consecutive_failures",
            "Failed deliveries in a row (0 after a success).",
            labels,
        )
        last_error = _family(
            GaugeMetricFamily,
            "connector_last_error_timestamp_seconds",
            "When the last delivery or reset of the connector failed (Unix time); absent if never.",
            labels,
        )
        takeovers = _family(
            CounterMetricFamily,
            "connector_lease_takeovers",
            "Times a worker took the connector's lease over from a holder that let it run out "
            "(a process that died or stalled past its lease).",
            labels,
        )
        last_success = _family(
            GaugeMetricFamily,
            "connector_last_success_timestamp_seconds",
            "When the connector's last batch was delivered (Unix time, database clock); "
            "absent if never.",
            labels,
        )
        state = _family(
            GaugeMetricFamily,
            "connector_state",
            "1 for the state the connector is in (as its stats route's health), 0 for the others.",
            (*labels, "state"),
        )
        expired = _family(
            GaugeMetricFamily,
            "connector_leases_expired",
            "Connectors whose lease holder let the lease run out (a process that died or "
            "stalled): each one is taken over by the next worker that comes round.",
            ("tenant",),
        )
        expired_by_tenant: dict[str, int] = {}
        for row in rows:
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
            expired_by_tenant[row.tenant] = expired_by_tenant.get(row.tenant, 0) + bool(
                row.lease_expired
            )
        for tenant, count in sorted(expired_by_tenant.items()):
            expired.add_metric([tenant], count)
        yield from (
            records,
            size,
            errors,
            lag,
            failures,
            last_error,
            last_success,
            takeovers,
            state,
            expired,
        )

    @staticmethod
    def _view_families(rows: list[sa.Row]) -> Iterator[Metric]:
        end = _family(
            CounterMetricFamily,
            "view_changes",
            "Changes pushed to the view (its change log's end seq).",
            _VIEW_LABELS,
        )
        retained = _family(
            GaugeMetricFamily,
            "view_change_log_records",
            "Changes the view's log holds: its end seq minus its oldest retained seq, plus one "
            "(an upper bound where compaction left gaps).",
            _VIEW_LABELS,
        )
        for row in rows:
            values = [row.tenant, row.pipeline, row.view]
            end.add_metric(values, row.log_end)
            held = 0 if row.oldest is None else row.log_end - row.oldest + 1
            retained.add_metric(values, max(0, held))
        yield from (end, retained)

    @staticmethod
    def _reset_families(rows: list[sa.Row]) -> Iterator[Metric]:
        resets = _family(
            GaugeMetricFamily,
            "resets",
            "Resets the database holds, by status and phase.",
            ("tenant", "status", "phase"),
        )
        replayed = _family(
            CounterMetricFamily,
            "reset_replayed_records",
            "Snapshot records replayed by the resets the database holds "
            "(rate() of it is the replay rate).",
            ("tenant",),
        )
        by_tenant: dict[str, int] = {}
        for row in rows:
            resets.add_metric([row.tenant, row.status, row.phase], row.count)
            by_tenant[row.tenant] = by_tenant.get(row.tenant, 0) + int(row.replayed)
        for tenant, count in sorted(by_tenant.items()):
            replayed.add_metric([tenant], count)
        yield from (resets, replayed)


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


def metrics_view() -> Response:
    """Answer a scrape: this process's (or every worker's) requests, and the database series."""
    tenant = scrape_tenant()
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(REQUESTS)
    registry.register(DatabaseCollector(tenant, int(current_app.config["METRICS_MAX_ROWS"])))
    return Response(
        generate_latest(registry),
        mimetype=None,
        content_type=CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


def init_app(app: Flask) -> None:
    """Time every request and serve ``GET /metrics`` (kept out of the OpenAPI document)."""
    app.wsgi_app = _StartClock(app.wsgi_app)
    app.after_request(_observe)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges from the multiprocess directory (gunicorn's child_exit)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
