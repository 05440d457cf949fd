"""Examples in the OpenAPI document: an error body for each error_code, path parameter values.

:mod:`app.docs.openapi` attaches them to each error answer and path parameter.
"""

from __future__ import annotations

from typing import Any

# Example bodies of each error, by error_code. The 404 one is the contract's own.
ERROR_EXAMPLES: dict[str, dict[str, Any]] = {
    "InvalidRequest": {
        "message": "The request is not valid: name",
        "error_code": "InvalidRequest",
        "details": {"name": ["Letters, digits, '_' and '-', 1 to 100 characters."]},
    },
    "InvalidResetToken": {
        "message": "The reset token's signature does not verify",
        "error_code": "InvalidResetToken",
        "details": {"reason": "bad_signature"},
    },
    "AuthenticationFailed": {
        "message": "The API key is not valid (it may have been revoked); create an API key "
        "with 'pipeline-manager api-keys create NAME --role read|write|admin'",
        "error_code": "AuthenticationFailed",
        "details": {"reason": "invalid_key"},
    },
    "InsufficientPermissions": {
        "message": "POST needs the 'write' role here; these credentials have 'read'. "
        "Use a write key.",
        "error_code": "InsufficientPermissions",
        "details": {"required_role": "write", "role": "read"},
    },
    "UnknownPipelineName": {
        "message": "Unknown pipeline name 'non-existent-pipeline'",
        "error_code": "UnknownPipelineName",
        "details": {"pipeline_name": "non-existent-pipeline"},
    },
    "UnknownView": {
        "message": "Pipeline 'orders' has no view 'non-existent-view'",
        "error_code": "UnknownView",
        "details": {"pipeline_name": "orders", "view_name": "non-existent-view"},
    },
    "UnknownConnector": {
        "message": "View 'totals' of pipeline 'orders' has no connector 'non-existent-connector'",
        "error_code": "UnknownConnector",
        "details": {
            "pipeline_name": "orders",
            "view_name": "totals",
            "connector_name": "non-existent-connector",
        },
    },
    "UnknownApiKey": {
        "message": "Unknown API key name 'non-existent-key'",
        "error_code": "UnknownApiKey",
        "details": {"api_key_name": "non-existent-key"},
    },
    "DuplicateName": {
        "message": "A pipeline named 'orders' already exists",
        "error_code": "DuplicateName",
        "details": {"pipeline_name": "orders"},
    },
    "QuotaExceeded": {
        "message": "The tenant has 10000 pipelines, its quota (TENANT_MAX_PIPELINES); "
        "remove some, or ask an operator to raise it",
        "error_code": "QuotaExceeded",
        "details": {"quota": "pipelines", "limit": 10000, "current": 10000},
    },
    "SinkInUse": {
        "message": "Another connector already writes to this sink",
        "error_code": "SinkInUse",
        "details": {"pipeline_name": "orders", "transport.config.path": "out/totals.jsonl"},
    },
    "PipelineNotStopped": {
        "message": "Pipeline 'orders' must be stopped to delete it; it is running",
        "error_code": "PipelineNotStopped",
        "details": {"pipeline_name": "orders", "status": "running"},
    },
    "IllegalPipelineAction": {
        "message": "Cannot pause pipeline 'orders' while it is stopped",
        "error_code": "IllegalPipelineAction",
        "details": {"pipeline_name": "orders", "status": "stopped", "action": "pause"},
    },
    "IllegalConnectorAction": {
        "message": "Connector 'sink1' is finishing a batch; retry in a moment",
        "error_code": "IllegalConnectorAction",
        "details": {"reason": "busy"},
    },
    "PipelineRestarted": {
        "message": "Pipeline 'orders' was restarted after this reset was issued; "
        "issue the reset again",
        "error_code": "PipelineRestarted",
        "details": {"pipeline_name": "orders", "token_incarnation": 1, "current_incarnation": 2},
    },
    "PayloadTooLarge": {
        "message": "The request body is larger than the 16777216 bytes accepted",
        "error_code": "PayloadTooLarge",
        "details": {"max_content_length": 16777216},
    },
    "UriTooLong": {
        "message": "The URL is longer than the 8000 bytes accepted",
        "error_code": "UriTooLong",
        "details": {"max_url_bytes": 8000, "url_bytes": 8123},
    },
    "UnsupportedMediaType": {
        "message": "Send the body as JSON, with 'Content-Type: application/json'",
        "error_code": "UnsupportedMediaType",
        "details": {"content_type": "text/plain", "accepted": ["application/json"]},
    },
    "InternalError": {
        "message": "Internal error; quote request id 3f2b9c0e5d7a4e8f when reporting it",
        "error_code": "InternalError",
        "details": {"request_id": "3f2b9c0e5d7a4e8f"},
    },
    "PipelineNotRunning": {
        "message": "Pipeline 'orders' is not running",
        "error_code": "PipelineNotRunning",
        "details": {"pipeline_name": "orders", "status": "stopped"},
    },
    "IdempotencyKeyReused": {
        "message": "The Idempotency-Key 'a1b2' was already used for a different request; "
        "use a new key for a new request",
        "error_code": "IdempotencyKeyReused",
        "details": {"idempotency_key": "a1b2"},
    },
    "IdempotencyKeyInProgress": {
        "message": "A request with the Idempotency-Key 'a1b2' is still running; retry shortly",
        "error_code": "IdempotencyKeyInProgress",
        "details": {"idempotency_key": "a1b2"},
    },
    "ServiceUnavailable": {
        "message": "The service is busy; retry later",
        "error_code": "ServiceUnavailable",
        "details": {"retry_after_seconds": 1},
    },
}

# Example values of path parameters: the names the README's walk-through uses.
PATH_EXAMPLES = {"pipeline_name": "orders", "view_name": "totals", "connector_name": "sink1"}
