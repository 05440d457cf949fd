"""``GET /healthz`` and ``GET /readyz``: public liveness and readiness checks.

``/healthz`` says the process answers and reaches its database (liveness).
``/readyz`` says it can serve: the database answers, the schema is at the
migrations' head, and the worker runs: where this process runs it, its poller
came round within a lease; where gunicorn runs it in delivery processes, one
of them wrote its heartbeat within a lease (readiness).
"""

from __future__ import annotations

import logging

import marshmallow as ma
import sqlalchemy as sa
from flask import Flask, Response, current_app
from sqlalchemy.exc import SQLAlchemyError

from app import worker
from app.database import schema_problem, storage_full_lately
from app.errors import ServiceUnavailable
from app.extensions import db
from app.prepared import PreparedSelect
from app.schemas import documented_only, documents_errors
from app.web import Blueprint

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Health of the service (no credentials needed).")


class HealthOut(ma.Schema):
    """Body of a healthy answer."""

    status = ma.fields.String(required=True, metadata={"example": "ok"})


_HEALTHY = b'{"status":"ok"}\n'
_PING = PreparedSelect(sa.select(sa.literal_column("1")))


@blp.route("/healthz", methods=["GET"])
@documented_only(
    blp.response(200, HealthOut),
    documents_errors(blp, {503: "ServiceUnavailable: the database does not answer"}),
)
def healthz():
    """Check that the service and its database answer"""
    # Load balancers call this often: one statement on a pooled connection (see
    # app/prepared.py), no session, and a body written once.
    try:
        _PING.first(db.engine, {})
    except SQLAlchemyError as exc:
        log.warning("health check: database unreachable: %s", type(exc).__name__)
        seconds = current_app.config["RETRY_AFTER_SECONDS"]
        raise ServiceUnavailable(
            "The database does not answer; retry later",
            details={"retry_after_seconds": seconds},
            headers={"Retry-After": str(seconds)},
        ) from None
    return Response(_HEALTHY, mimetype="application/json", headers={"Cache-Control": "no-store"})


class ReadyOut(ma.Schema):
    """Body of a ready answer: each check and how it stands."""

    status = ma.fields.String(required=True, metadata={"example": "ready"})
    checks = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        required=True,
        metadata={"example": {"database": "ok", "schema": "ok", "worker": "ok"}},
    )


def readiness() -> tuple[dict[str, str], str | None]:
    """Run the readiness checks; return each one's state and the first problem (or None)."""
    checks = {"database": "unknown", "schema": "unknown", "worker": "unknown"}
    try:
        db.session.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
        problem = schema_problem()
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.warning("readiness: database unreachable: %s", type(exc).__name__)
        checks["database"] = "unreachable"
        return checks, "The database does not answer"
    checks["schema"] = "ok" if problem is None else "not_at_head"
    full = storage_full_lately()
    if full is not None:
        # Reads still work; writes (pushes, resets, delivery's offsets) do not.
        checks["database"] = "full"
        problem = problem or f"The database's disk is full (a write failed {full:.0f} s ago)"
    app = current_app._get_current_object()
    checks["worker"], worker_problem = worker.readiness(app)
    return checks, problem or worker_problem


@blp.route("/readyz", methods=["GET"])
@blp.response(200, ReadyOut)
@documents_errors(
    blp,
    {503: "ServiceUnavailable: not ready (database, schema or worker; see details.checks)"},
)
def readyz():
    """Check that this process can serve: database, schema at head, its worker running"""
    checks, problem = readiness()
    if problem is not None:
        seconds = current_app.config["RETRY_AFTER_SECONDS"]
        raise ServiceUnavailable(
            f"Not ready: {problem}",
            details={"checks": checks, "retry_after_seconds": seconds},
            headers={"Retry-After": str(seconds)},
        )
    return {"status": "ready", "checks": checks}, 200, {"Cache-Control": "no-store"}


def init_app(app: Flask) -> None:
    """Register the health route."""
    from app.web import api

    api.register_blueprint(blp)
