"""Every model, imported in one place for the migrations and the tests."""

from app.connectors.models import Connector
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetPhase, ResetStatus

__all__ = ["Connector", "Pipeline", "PipelineStatus", "Reset", "ResetPhase", "ResetStatus", "View"]
