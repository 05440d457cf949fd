"""HTTP routes of output connectors."""

from __future__ import annotations

from flask.views import MethodView

from app import idempotency
from app.connectors import service
from app.connectors.schemas import ConnectorCreate, ConnectorOut
from app.extensions import Blueprint
from app.pipelines.routes import load_pipeline
from app.pipelines.service import get_view
from app.schemas import documents_errors

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

    @blp.response(200, ConnectorOut(many=True))
    @documents_errors(blp, {404: "Unknown pipeline or view"})
    def get(self, pipeline_name, view_name):
        """List a view's connectors"""
        return service.list_connectors(get_view(load_pipeline(pipeline_name), view_name))

    @idempotency.idempotent(blp)
    @blp.arguments(ConnectorCreate)
    @blp.response(201, ConnectorOut)
    @documents_errors(
        blp,
        {
            404: "Unknown pipeline or view",
            409: "The pipeline is not stopped, the connector exists, or another connector "
            "writes to the same sink file (SinkInUse)",
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
