"""HTTP routes of output connectors."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from app import idempotency
from app.connectors import service
from app.connectors.schemas import (
    ConnectorCreate,
    ConnectorListQuery,
    ConnectorOut,
    ConnectorStart,
)
from app.pipelines.routes import load_pipeline
from app.pipelines.service import get_view
from app.schemas import LINK_HEADER_DOC, documents_errors, page_headers
from app.web import Blueprint

UNKNOWN = "Unknown pipeline, view or connector"

blp = Blueprint(
    "connectors",
    __name__,
    url_prefix="/v0/pipelines/<pipeline_name>/views/<view_name>/connectors",
    description="Output connectors: deliver a view's changes to a sink.",
)


@blp.route("")
class Connectors(MethodView):
    """A view's output connectors."""

    @blp.arguments(ConnectorListQuery, location="query", as_kwargs=True, unknown=ma.RAISE)
    @blp.response(200, ConnectorOut(many=True), headers=LINK_HEADER_DOC)
    @documents_errors(blp, {404: "Unknown pipeline or view"})
    def get(self, pipeline_name, view_name, limit, after=None):
        """List a view's connectors

        By name, at most `limit` per page; the `Link` header points at the next page.
        """
        view = get_view(load_pipeline(pipeline_name), view_name)
        found = service.list_connectors(view, limit + 1, after)
        page = found[:limit]
        cursor = page[-1].name if len(found) > limit else None
        return page, 200, page_headers(cursor, limit)

    @idempotency.idempotent(blp)
    @blp.arguments(ConnectorCreate)
    @blp.response(201, ConnectorOut)
    @documents_errors(
        blp,
        {
            404: "Unknown pipeline or view",
            409: "The pipeline is not stopped, the connector exists, another connector "
            "writes to the same sink file (SinkInUse), or the tenant is at its quota "
            "(QuotaExceeded)",
        },
    )
    def post(self, body, pipeline_name, view_name):
        """Add a connector to a view of a stopped pipeline"""
        connector = service.add_connector(load_pipeline(pipeline_name), view_name, **body)
        location = f"/v0/pipelines/{pipeline_name}/views/{view_name}/connectors/{connector.name}"
        return connector, 201, {"Location": location}


@blp.route("/<connector_name>")
class ConnectorItem(MethodView):
    """One output connector."""

    @blp.response(200, ConnectorOut)
    @documents_errors(blp, {404: UNKNOWN})
    def get(self, pipeline_name, view_name, connector_name):
        """Get a connector"""
        return service.get_connector(load_pipeline(pipeline_name), view_name, connector_name)

    @blp.response(204)
    @documents_errors(blp, {404: UNKNOWN, 409: "The pipeline is not stopped"})
    def delete(self, pipeline_name, view_name, connector_name):
        """Remove a connector from a stopped pipeline"""
        service.remove_connector(load_pipeline(pipeline_name), view_name, connector_name)


@blp.route("/<connector_name>/pause", methods=["POST"])
@blp.response(200, ConnectorOut)
@documents_errors(blp, {404: UNKNOWN})
def pause(pipeline_name, view_name, connector_name):
    """Pause an output connector

    It keeps its place and streams nothing until started; a batch under way
    finishes. Resets still run. Pausing a paused connector changes nothing.
    """
    return service.pause_connector(load_pipeline(pipeline_name), view_name, connector_name)


@blp.route("/<connector_name>/start", methods=["POST"])
@blp.arguments(ConnectorStart, required=False)
@blp.response(200, ConnectorOut)
@documents_errors(
    blp,
    {
        404: UNKNOWN,
        409: "IllegalConnectorAction: skip asked while a worker finishes a batch "
        "(details.reason busy; retry) or while the sink owes a snapshot (not_in_sync)",
    },
)
def start(body, pipeline_name, view_name, connector_name):
    """Start an output connector

    A paused connector resumes exactly where it stopped: nothing produced while
    it was paused is lost. With `{"skip": true}` it starts at the change log's
    end instead. Starting a running connector changes nothing.
    """
    return service.start_connector(
        load_pipeline(pipeline_name), view_name, connector_name, skip=body.get("skip", False)
    )
