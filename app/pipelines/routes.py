"""HTTP routes of pipelines and their views."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from app import idempotency
from app.auth import current_tenant
from app.pipelines import service
from app.pipelines.models import Pipeline
from app.pipelines.schemas import (
    PipelineCreate,
    PipelineListQuery,
    PipelineOut,
    PipelineUpdate,
    ViewCreate,
    ViewOut,
)
from app.schemas import LINK_HEADER_DOC, documents_errors, page_headers
from app.web import Blueprint

UNKNOWN = "Unknown pipeline"
NOT_STOPPED = "The pipeline is not stopped"

blp = Blueprint(
    "pipelines", __name__, url_prefix="/v0/pipelines", description="Pipelines and their lifecycle."
)


def load_pipeline(pipeline_name: str) -> Pipeline:
    """Load the caller's pipeline of that name or raise ``UnknownPipelineName``."""
    return service.get_pipeline(current_tenant(), pipeline_name)


@blp.route("")
class Pipelines(MethodView):
    """The caller's pipelines."""

    @blp.arguments(PipelineListQuery, location="query", as_kwargs=True, unknown=ma.RAISE)
    @blp.response(200, PipelineOut(many=True), headers=LINK_HEADER_DOC)
    def get(self, limit, after=None, status=None):
        """List pipelines

        By name, at most `limit` per page; the `Link` header points at the next
        page. `status` keeps only the pipelines in that status.
        """
        found = service.list_pipelines(current_tenant(), limit + 1, after, status)
        page = found[:limit]
        cursor = page[-1].name if len(found) > limit else None
        return page, 200, page_headers(cursor, limit)

    @idempotency.idempotent(blp)
    @blp.arguments(PipelineCreate)
    @blp.response(201, PipelineOut)
    @documents_errors(
        blp, {409: "A pipeline of that name exists, or the tenant is at its quota (QuotaExceeded)"}
    )
    def post(self, body):
        """Create a pipeline"""
        pipeline = service.create_pipeline(current_tenant(), **body)
        return pipeline, 201, {"Location": f"/v0/pipelines/{pipeline.name}"}


@blp.route("/<pipeline_name>")
class PipelineItem(MethodView):
    """One pipeline."""

    @blp.response(200, PipelineOut)
    @documents_errors(blp, {404: UNKNOWN})
    def get(self, pipeline_name):
        """Get a pipeline"""
        return load_pipeline(pipeline_name)

    @blp.arguments(PipelineUpdate)
    @blp.response(200, PipelineOut)
    @documents_errors(blp, {404: UNKNOWN, 409: "Views change only while the pipeline is stopped"})
    def patch(self, body, pipeline_name):
        """Change a pipeline's description or views"""
        return service.update_pipeline(load_pipeline(pipeline_name), **body)

    @blp.response(204)
    @documents_errors(blp, {404: UNKNOWN, 409: NOT_STOPPED})
    def delete(self, pipeline_name):
        """Delete a stopped pipeline"""
        service.delete_pipeline(load_pipeline(pipeline_name))


def _action_route(action: str, summary: str) -> None:
    """Register ``POST /v0/pipelines/{pipeline_name}/{action}``."""

    def run(pipeline_name):
        return getattr(service, action)(load_pipeline(pipeline_name))

    run.__doc__ = summary
    run.__name__ = action
    run = documents_errors(
        blp, {404: UNKNOWN, 409: "The action does not apply to the pipeline's status"}
    )(blp.response(200, PipelineOut)(run))
    blp.route(f"/<pipeline_name>/{action}", methods=["POST"], endpoint=action)(run)


_action_route("start", "Start a pipeline (a new incarnation) or resume a paused one")
_action_route("stop", "Stop a pipeline, ending its incarnation")
_action_route("pause", "Pause a running pipeline")
_action_route("resume", "Resume a paused pipeline")
_action_route(
    "restart",
    "Restart a pipeline: stop and start in one step, giving one new incarnation "
    "(reset tokens of the previous one answer 410)",
)


@blp.route("/<pipeline_name>/views")
class Views(MethodView):
    """A pipeline's output views."""

    @blp.response(200, ViewOut(many=True))
    @documents_errors(blp, {404: UNKNOWN})
    def get(self, pipeline_name):
        """List a pipeline's views"""
        return load_pipeline(pipeline_name).views

    @blp.arguments(ViewCreate)
    @blp.response(201, ViewOut)
    @documents_errors(blp, {404: UNKNOWN, 409: "The pipeline is not stopped, or the view exists"})
    def post(self, body, pipeline_name):
        """Add a view to a stopped pipeline"""
        return service.add_view(load_pipeline(pipeline_name), body["name"])


@blp.route("/<pipeline_name>/views/<view_name>", methods=["DELETE"])
@blp.response(204)
@documents_errors(blp, {404: "Unknown pipeline or view", 409: NOT_STOPPED})
def delete_view(pipeline_name, view_name):
    """Remove a view from a stopped pipeline"""
    service.remove_view(load_pipeline(pipeline_name), view_name)
