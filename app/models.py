"""Every model, imported in one place for the migrations and the tests."""

from app.auth.models import ApiKey
from app.connectors.models import Connector
from app.delivery.models import WorkerProcess
from app.notifications.models import NotificationDelivery, NotificationEndpoint, NotificationEvent
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.resets.models import Reset, ResetPhase, ResetStatus
from app.view_data.models import ViewChange, ViewLog, ViewRecord

__all__ = [
    "ApiKey",
    "Connector",
    "NotificationDelivery",
    "NotificationEndpoint",
    "NotificationEvent",
    "Pipeline",
    "PipelineStatus",
    "Reset",
    "ResetPhase",
    "ResetStatus",
    "View",
    "ViewChange",
    "ViewLog",
    "ViewRecord",
    "WorkerProcess",
]
