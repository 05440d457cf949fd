"""How the reference presents each operation: its section, id, title and answers' words.

:mod:`app.docs.openapi` applies these tables to the document flask-smorest builds.
"""

from __future__ import annotations

from typing import NamedTuple

# The sections of the reference, in the order it shows them, and what each holds.
PIPELINES = "Pipelines"
LIFECYCLE = "Pipeline Lifecycle"
VIEW_DATA = "View Data"
OUTPUT_CONNECTORS = "Output Connectors"
API_KEYS = "API Keys"
NOTIFICATIONS = "Notifications"
HEALTH = "Health"
TAGS: dict[str, str] = {
    PIPELINES: "Create, read, change and delete pipelines and declare their output views.",
    LIFECYCLE: "Start, stop, pause, resume and restart a pipeline. Each start of a stopped "
    "pipeline begins a new incarnation.",
    VIEW_DATA: "The changes of a view, pushed by the pipeline's engine.",
    OUTPUT_CONNECTORS: "Output connectors deliver a view's changes to a sink (a file, an "
    "HTTP endpoint, a PostgreSQL table or a Delta Lake table): add and remove them, pause "
    "and start them, read their delivery statistics, and reset them (a full snapshot "
    "replayed to the sink), preview, follow or cancel the reset.",
    API_KEYS: "API keys of the caller's tenant; 'admin' role only. A key is shown once, when "
    "it is created, and never outranks or outlives the credential that created it.",
    NOTIFICATIONS: "Endpoints of the caller's tenant that its events (a reset completed, "
    "failed or cancelled; a connector failed or out of sync) are POSTed to, signed with a "
    "secret shown once; 'admin' role only. Each event is delivered at least once, retried "
    "for NOTIFICATION_RETRY_HOURS; its deliveries can be followed.",
    HEALTH: "Health of the service (no credentials needed).",
}


class Operation(NamedTuple):
    """How the reference presents one operation."""

    # Short and stable: generated clients name their functions after it.
    operation_id: str
    # The section it is filed under (a generated client's module, too).
    tag: str
    # Its short title (the summary).
    title: str
    # What its success answer means.
    answer: str


_P = "/v0/pipelines/{pipeline_name}"
_V = _P + "/views/{view_name}"
_C = _V + "/connectors/{connector_name}"
_N = "/v0/notifications/{notification_id}"
# Every operation, by path and method. A new operation is added here;
# tests/test_openapi.py fails for one left out.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/healthz", "get"): Operation(
        "check_health", HEALTH, "Check Health", "The service and its database answer"
    ),
    ("/readyz", "get"): Operation(
        "check_readiness",
        HEALTH,
        "Check Readiness",
        "This process can serve: the database answers, its schema is at head and the "
        "process's worker runs",
    ),
    ("/v0/api_keys", "get"): Operation(
        "list_api_keys",
        API_KEYS,
        "List API Keys",
        "The tenant's API keys have been listed (never the keys themselves)",
    ),
    ("/v0/api_keys", "post"): Operation(
        "create_api_key",
        API_KEYS,
        "Create API Key",
        "The API key has been created; `key` holds it, shown this once",
    ),
    ("/v0/api_keys/{api_key_name}", "get"): Operation(
        "get_api_key",
        API_KEYS,
        "Get API Key",
        "The API key has been retrieved (never the key itself)",
    ),
    ("/v0/api_keys/{api_key_name}", "delete"): Operation(
        "revoke_api_key", API_KEYS, "Revoke API Key", "The API key has been revoked"
    ),
    ("/v0/notifications", "get"): Operation(
        "list_notification_endpoints",
        NOTIFICATIONS,
        "List Notification Endpoints",
        "A page of the tenant's notification endpoints, oldest first (never their secrets); "
        "`Link` points at the next one",
    ),
    ("/v0/notifications", "post"): Operation(
        "create_notification_endpoint",
        NOTIFICATIONS,
        "Register Notification Endpoint",
        "The endpoint has been registered; `secret` holds its signing secret, shown this once",
    ),
    (_N, "get"): Operation(
        "get_notification_endpoint",
        NOTIFICATIONS,
        "Get Notification Endpoint",
        "The endpoint and how its deliveries stand (never its secret)",
    ),
    (_N, "delete"): Operation(
        "delete_notification_endpoint",
        NOTIFICATIONS,
        "Remove Notification Endpoint",
        "The endpoint and its deliveries have been removed",
    ),
    (_N + "/test", "post"): Operation(
        "test_notification_endpoint",
        NOTIFICATIONS,
        "Send Test Notification",
        "A `notification.test` event has been queued to the endpoint; the answer is its "
        "delivery, and `Location` lists the endpoint's deliveries",
    ),
    (_N + "/deliveries", "get"): Operation(
        "list_notification_deliveries",
        NOTIFICATIONS,
        "List Notification Deliveries",
        "A page of the endpoint's deliveries, newest first; `Link` points at the next one",
    ),
    ("/v0/pipelines", "get"): Operation(
        "list_pipelines",
        PIPELINES,
        "List Pipelines",
        "A page of the caller's pipelines, by name; `Link` points at the next one",
    ),
    ("/v0/pipelines", "post"): Operation(
        "create_pipeline", PIPELINES, "Create Pipeline", "The pipeline has been created, stopped"
    ),
    (_P, "get"): Operation(
        "get_pipeline", PIPELINES, "Get Pipeline", "The pipeline has been retrieved"
    ),
    (_P, "patch"): Operation(
        "update_pipeline",
        PIPELINES,
        "Update Pipeline",
        "The pipeline has been changed; the answer is the pipeline as it now is",
    ),
    (_P, "delete"): Operation(
        "delete_pipeline", PIPELINES, "Delete Pipeline", "The pipeline has been deleted"
    ),
    (_P + "/start", "post"): Operation(
        "start_pipeline",
        LIFECYCLE,
        "Start Pipeline",
        "The pipeline runs: a new incarnation, or the paused one resumed",
    ),
    (_P + "/stop", "post"): Operation(
        "stop_pipeline",
        LIFECYCLE,
        "Stop Pipeline",
        "The pipeline has stopped; its incarnation has ended",
    ),
    (_P + "/pause", "post"): Operation(
        "pause_pipeline", LIFECYCLE, "Pause Pipeline", "The pipeline has been paused"
    ),
    (_P + "/resume", "post"): Operation(
        "resume_pipeline", LIFECYCLE, "Resume Pipeline", "The pipeline runs again"
    ),
    (_P + "/restart", "post"): Operation(
        "restart_pipeline",
        LIFECYCLE,
        "Restart Pipeline",
        "The pipeline runs as a new incarnation",
    ),
    (_P + "/reset_status", "get"): Operation(
        "get_reset_status",
        OUTPUT_CONNECTORS,
        "Check Reset Status",
        "Reset token status has been retrieved",
    ),
    (_P + "/reset_cancel", "post"): Operation(
        "cancel_reset",
        OUTPUT_CONNECTORS,
        "Cancel Reset",
        "The reset has been cancelled: the sink keeps what it had and the connector "
        "streams on from where it stopped",
    ),
    (_P + "/views", "get"): Operation(
        "list_views", PIPELINES, "List Views", "The pipeline's output views have been listed"
    ),
    (_P + "/views", "post"): Operation(
        "add_view", PIPELINES, "Add View", "The view has been added to the pipeline"
    ),
    (_V, "delete"): Operation(
        "delete_view", PIPELINES, "Delete View", "The view has been removed from the pipeline"
    ),
    (_V + "/changes", "post"): Operation(
        "push_changes",
        VIEW_DATA,
        "Push View Changes",
        "The batch has been stored at the end of the view's change log",
    ),
    (_V + "/connectors", "get"): Operation(
        "list_connectors",
        OUTPUT_CONNECTORS,
        "List Output Connectors",
        "The view's output connectors have been listed",
    ),
    (_V + "/connectors", "post"): Operation(
        "add_connector",
        OUTPUT_CONNECTORS,
        "Add Output Connector",
        "The output connector has been added to the view",
    ),
    (_C, "get"): Operation(
        "get_connector",
        OUTPUT_CONNECTORS,
        "Get Output Connector",
        "The output connector has been retrieved",
    ),
    (_C, "delete"): Operation(
        "delete_connector",
        OUTPUT_CONNECTORS,
        "Delete Output Connector",
        "The output connector has been removed",
    ),
    (_C + "/reset", "post"): Operation(
        "reset_connector",
        OUTPUT_CONNECTORS,
        "Reset Output Connector",
        "The reset has been accepted (or, while one of the connector is queued or running, "
        "that reset is the answer): `token` is the reset token that Check Reset Status "
        "takes, and `Location` points at the reset's status",
    ),
    (_C + "/pause", "post"): Operation(
        "pause_connector",
        OUTPUT_CONNECTORS,
        "Pause Output Connector",
        "The output connector has been paused",
    ),
    (_C + "/start", "post"): Operation(
        "start_connector",
        OUTPUT_CONNECTORS,
        "Start Output Connector",
        "The output connector streams again",
    ),
    (_C + "/stats", "get"): Operation(
        "get_connector_stats",
        OUTPUT_CONNECTORS,
        "Get Output Connector Statistics",
        "The output connector's delivery statistics have been retrieved",
    ),
    (_C + "/resets", "get"): Operation(
        "list_connector_resets",
        OUTPUT_CONNECTORS,
        "List Output Connector Resets",
        "A page of the connector's resets, newest first; `Link` points at the next one",
    ),
}

# What an operation's error answers mean where the route's own words (or the
# shared ones) would say less; these replace them.
_NOT_RUNNING_OR_BUSY = (
    "PipelineNotRunning: the pipeline is stopped; or ServiceUnavailable: the database is "
    "busy or unreachable; retry after `Retry-After`"
)
ERROR_DESCRIPTIONS: dict[tuple[str, str], dict[int, str]] = {
    (_P + "/reset_status", "get"): {
        400: "An invalid reset token was provided: InvalidResetToken, `details.reason` says "
        "why (`missing`, `malformed`, `bad_signature`, `expired`, `wrong_pipeline`, "
        "`unknown_incarnation` or `unknown_reset`)",
        410: "PipelineRestarted: the token comes from a previous incarnation of the pipeline, "
        "so the reset cannot be validated across incarnations; reissue the reset",
        503: _NOT_RUNNING_OR_BUSY
        + "; or ServiceUnavailable: as many event streams as a process serves are open "
        "(EVENT_STREAMS_PER_PROCESS); retry after `Retry-After`, or poll",
    },
    (_P + "/reset_cancel", "post"): {
        400: "An invalid reset token was provided: InvalidResetToken, `details.reason` says "
        "why, as Check Reset Status answers",
        409: "ResetNotCancellable: the reset ended (`details.reason` is its status), its http "
        "sink was already told to reset (`sink_reset`), or its connector owes the snapshot "
        "anyway (`owed`)",
        410: "PipelineRestarted: the token comes from a previous incarnation of the pipeline",
        503: _NOT_RUNNING_OR_BUSY,
    },
    (_C + "/reset", "post"): {503: _NOT_RUNNING_OR_BUSY},
    (_V + "/changes", "post"): {503: _NOT_RUNNING_OR_BUSY},
}

# The 404 of an operation, by the last name its path takes: what does not exist.
NOT_FOUND_DESCRIPTIONS = {
    "pipeline_name": "Pipeline with that name does not exist",
    "view_name": "Pipeline or view with that name does not exist",
    "connector_name": "Pipeline, view or connector with that name does not exist",
    "api_key_name": "API key with that name does not exist",
    "notification_id": "Notification endpoint with that id does not exist",
}
