"""Every model, imported in one place for the migrations and the tests."""

from app.auth.models import ApiKey
from app.connectors.models import Connector
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetPhase, ResetStatus

__all__ = [
    "ApiKey",
    "Connector",
    "Pipeline",
    "PipelineStatus",
    "Reset",
    "ResetPhase",
    "ResetStatus",
    "View",
]
