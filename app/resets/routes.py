"""HTTP routes of resets: issuing one, and polling its status."""

from __future__ import annotations

from urllib.parse import quote

import marshmallow as ma
from flask import current_app, request

from app import idempotency
from app.auth import current_tenant
from app.connectors.service import get_connector
from app.extensions import Blueprint
from app.pipelines.routes import load_pipeline
from app.resets import service
from app.resets.schemas import (
    ResetHistoryItem,
    ResetHistoryQuery,
    ResetIssued,
    ResetStatusOut,
    ResetStatusQuery,
)
from app.schemas import LINK_HEADER_DOC, documented_only, documents_errors, page_headers

blp = Blueprint(
    "resets",
    __name__,
    url_prefix="/v0/pipelines/<pipeline_name>",
    description="Output connector resets and their progress.",
)


def status_url(pipeline_name: str, token: str) -> str:
    """Return the reset_status URL of a token (a path: callers know the host)."""
    return f"/v0/pipelines/{quote(pipeline_name)}/reset_status?token={quote(token)}"


@blp.route("/views/<view_name>/connectors/<connector_name>/reset", methods=["POST"])
@idempotency.idempotent(blp)
@blp.response(202, ResetIssued)
@documents_errors(
    blp,
    {
        404: "Unknown pipeline, view or connector",
        409: "The tenant has as many resets queued as its quota allows (QuotaExceeded)",
        503: "The pipeline is stopped (PipelineNotRunning) or the database is busy",
    },
)
def issue_reset(pipeline_name, view_name, connector_name):
    """Reset an output connector

    The connector drops what it buffered, asks its sink to reset itself,
    replays a full snapshot of the view, then streams on. While a reset of
    the connector is still queued, the same reset (and token) is returned.
    """
    pipeline = load_pipeline(pipeline_name)
    reset = service.request_reset(pipeline, view_name, connector_name)
    url = status_url(pipeline.name, reset.token)
    reset.status_url = url
    return reset, 202, {"Location": url, "Cache-Control": "no-store"}


@blp.route("/views/<view_name>/connectors/<connector_name>/resets", methods=["GET"])
@blp.arguments(ResetHistoryQuery, location="query", as_kwargs=True, unknown=ma.RAISE)
@blp.response(200, ResetHistoryItem(many=True), headers=LINK_HEADER_DOC)
@documents_errors(blp, {404: "Unknown pipeline, view or connector"})
def list_resets(pipeline_name, view_name, connector_name, limit, after=None):
    """List a connector's resets

    Newest first, at most `limit` per page; the `Link` header points at the
    next (older) page. Every reset is listed, abandoned ones too; tokens are
    not shown again.
    """
    connector = get_connector(load_pipeline(pipeline_name), view_name, connector_name)
    found = service.history(connector, limit + 1, after)
    page = found[:limit]
    cursor = str(page[-1].id) if len(found) > limit else None
    return page, 200, page_headers(cursor, limit)


@blp.route("/reset_status", methods=["GET"])
@documented_only(
    blp.arguments(ResetStatusQuery, location="query", as_kwargs=True),
    blp.response(200, ResetStatusOut),
    documents_errors(
        blp,
        {
            400: "InvalidResetToken: missing, malformed, bad signature, expired, another "
            "pipeline's, or naming an incarnation or reset this pipeline never had "
            "(details.reason says which)",
            404: "UnknownPipelineName",
            410: "PipelineRestarted: the token is of an earlier incarnation; reissue the reset",
            503: "PipelineNotRunning (the pipeline is stopped) or ServiceUnavailable "
            "(the database is busy; see Retry-After)",
        },
    ),
)
def get_reset_status(pipeline_name):
    """Progress of an output connector reset"""
    # Pollers call this route more than any other: the query is read and the
    # answer serialized here (ResetStatusQuery and ResetStatusOut document them).
    answer = service.reset_status(current_tenant(), pipeline_name, request.args.get("token"))
    response = current_app.json.response(answer)
    response.headers["Cache-Control"] = "no-store"
    return response
