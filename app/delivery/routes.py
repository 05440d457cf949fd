"""HTTP route of delivery statistics."""

from __future__ import annotations

from app.delivery import service
from app.delivery.schemas import ConnectorStats
from app.pipelines.routes import load_pipeline
from app.schemas import documents_errors
from app.web import Blueprint

blp = Blueprint(
    "delivery",
    __name__,
    url_prefix="/v0/pipelines/<pipeline_name>/views/<view_name>/connectors/<connector_name>",
    description="Delivery of view changes to sinks.",
)


@blp.route("/stats", methods=["GET"])
@blp.response(200, ConnectorStats)
@documents_errors(blp, {404: "Unknown pipeline, view or connector"})
def connector_stats(pipeline_name, view_name, connector_name):
    """Delivery statistics of a connector"""
    stats = service.connector_stats(load_pipeline(pipeline_name), view_name, connector_name)
    return stats, 200, {"Cache-Control": "no-store"}
