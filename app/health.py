"""``GET /healthz``: a public liveness check that the database answers."""

from __future__ import annotations

import logging

import marshmallow as ma
import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from app.errors import ServiceUnavailable
from app.extensions import Blueprint, db
from app.schemas import documents_errors

log = logging.getLogger(__name__)

blp = Blueprint("health", __name__, description="Health of the service (no credentials needed).")


class HealthOut(ma.Schema):
    """Body of a healthy answer."""

    status = ma.fields.String(required=True, metadata={"example": "ok"})


@blp.route("/healthz", methods=["GET"])
@blp.response(200, HealthOut)
@documents_errors(blp, {503: "ServiceUnavailable: the database does not answer"})
def healthz():
    """Check that the service and its database answer"""
    try:
        db.session.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        db.session.rollback()
        log.warning("health check: database unreachable: %s", type(exc).__name__)
        seconds = current_app.config["RETRY_AFTER_SECONDS"]
        raise ServiceUnavailable(
            "The database does not answer; retry later",
            details={"retry_after_seconds": seconds},
            headers={"Retry-After": str(seconds)},
        ) from None
    return {"status": "ok"}, 200, {"Cache-Control": "no-store"}


def init_app(app: Flask) -> None:
    """Register the health route."""
    from app.extensions import api

    api.register_blueprint(blp)
