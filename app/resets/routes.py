"""HTTP routes of resets: issuing (or previewing) one, following it, cancelling it."""

from __future__ import annotations

from urllib.parse import quote

import marshmallow as ma
from flask import current_app, request

from app import idempotency
from app.auth import current_tenant
from app.connectors.service import get_connector
from app.pipelines.routes import load_pipeline
from app.resets import events, service
from app.resets.schemas import (
    ResetHistoryItem,
    ResetHistoryQuery,
    ResetIssued,
    ResetPreview,
    ResetRequestQuery,
    ResetStatusOut,
    ResetStatusQuery,
)
from app.schemas import LINK_HEADER_DOC, documented_only, documents_errors, page_headers
from app.web import Blueprint

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
@blp.arguments(ResetRequestQuery, location="query", as_kwargs=True, unknown=ma.RAISE)
@blp.response(202, ResetIssued)
@blp.alt_response(200, schema=ResetPreview, description="dry_run=true: what a reset would do now")
@documents_errors(
    blp,
    {
        404: "Unknown pipeline, view or connector",
        409: "The tenant has as many resets queued as its quota allows (QuotaExceeded)",
        503: "The pipeline is stopped (PipelineNotRunning) or the database is busy",
    },
)
def issue_reset(pipeline_name, view_name, connector_name, dry_run=False):
    """Reset an output connector

    The connector drops what it buffered, asks its sink to reset itself,
    replays a full snapshot of the view, then streams on. While a reset of
    the connector is queued or running, a request is answered with that reset
    (its token, 202) and never starts a second snapshot: the caller follows
    the reset under way. With `dry_run=true` nothing changes: the answer (200)
    tells what a reset would do now (what the sink's readers see, the
    snapshot's size, the reset it would attach to).
    """
    pipeline = load_pipeline(pipeline_name)
    if dry_run:
        preview = service.preview_reset(pipeline, view_name, connector_name)
        live = preview["reset_in_progress"]
        if live is not None:
            live["status_url"] = status_url(pipeline.name, live.pop("token"))
        response = current_app.json.response(ResetPreview().dump(preview))
        response.headers["Cache-Control"] = "no-store"
        return response
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


_STATUS_ERRORS = {
    400: "InvalidResetToken: missing, malformed, bad signature, expired, another "
    "pipeline's, or naming an incarnation or reset this pipeline never had "
    "(details.reason says which)",
    404: "UnknownPipelineName",
    410: "PipelineRestarted: the token is of an earlier incarnation; reissue the reset",
    503: "PipelineNotRunning (the pipeline is stopped) or ServiceUnavailable "
    "(the database is busy, or as many event streams as a process serves are open; "
    "see Retry-After)",
}

_STREAM_DOC = {
    "content": {
        "application/json": {"schema": ResetStatusOut},
        "text/event-stream": {
            "schema": {"type": "string", "format": "binary"},
            "example": "retry: 2000\n\nevent: status\nid: inprogress.replaying_snapshot.3.1."
            '20000\ndata: {"status":"inprogress","phase":"replaying_snapshot",...}\n\n',
        },
    }
}


@blp.route("/reset_status", methods=["GET"])
@documented_only(
    blp.arguments(ResetStatusQuery, location="query", as_kwargs=True),
    blp.response(200, ResetStatusOut),
    blp.doc(responses={"200": _STREAM_DOC}),
    documents_errors(blp, _STATUS_ERRORS),
)
def get_reset_status(pipeline_name):
    """Progress of an output connector reset

    With `Accept: text/event-stream` the answer is a stream of Server-Sent
    Events: a `status` event (the JSON of the plain answer) at once, then at
    every change of phase and at most every second while records replay,
    until the final status; comment lines keep a quiet stream open;
    `Last-Event-ID` resumes without repeating the state last seen. Errors
    before the stream starts are answered as JSON, as without the header.
    """
    # Pollers call this route more than any other: the query is read and the
    # answer serialized here (ResetStatusQuery and ResetStatusOut document them).
    token = request.args.get("token")
    if events.wanted():
        return events.stream(current_tenant(), pipeline_name, token)
    answer = service.reset_status(current_tenant(), pipeline_name, token)
    response = current_app.json.response(answer)
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("/reset_cancel", methods=["POST"])
@idempotency.idempotent(blp)
@documented_only(
    blp.arguments(ResetStatusQuery, location="query", as_kwargs=True),
    blp.response(200, ResetStatusOut),
    documents_errors(
        blp,
        {
            **_STATUS_ERRORS,
            409: "ResetNotCancellable: the reset ended (details.reason is its status), its "
            "http sink was already told to reset (sink_reset), or its connector owes the "
            "snapshot anyway (owed)",
        },
    ),
)
def cancel_reset(pipeline_name):
    """Cancel an output connector reset

    A reset can be cancelled while its sink is untouched: while it is queued,
    and, on a sink that stages its snapshot (file, postgres, delta), until
    the staged copy is switched in. The staging copy is dropped, the sink
    keeps its previous contents, and the connector streams on from where it
    stopped. The answer is the reset's status, `cancelled`. A retry with the
    same `Idempotency-Key` gets that answer again; without one, a second
    cancel answers 409 with the reset's status.
    """
    answer = service.cancel_reset(current_tenant(), pipeline_name, request.args.get("token"))
    response = current_app.json.response(answer)
    response.headers["Cache-Control"] = "no-store"
    return response
