"""Completing flask-smorest's OpenAPI document with what every route shares.

The routes document their own answers (``@blp.response`` and
``documents_errors``). What every ``/v0`` route can answer whatever it does,
the credentials errors, a crash, a busy database, a body that fails validation,
is added here once, so the document lists every status code a caller can meet
without each route repeating it. Examples of the error body come from one table.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

API_PREFIX = "/v0"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ERROR_REF = "#/components/schemas/Error"
BEARER_SCHEME = "bearerAuth"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

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
    "SinkInUse": {
        "message": "Another connector already writes to this sink file",
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

# What every /v0 route may answer, whatever it does (public routes: 500 and 503). 403 is not
# here: app.auth.openapi documents it on the routes whose role a valid credential can lack.
COMMON_ERRORS = {
    401: "AuthenticationFailed: no, malformed, unknown, revoked or expired credentials "
    "(with a `WWW-Authenticate: Bearer` header)",
    414: "UriTooLong: the URL is longer than the 8000 bytes the service accepts",
    500: "InternalError: a bug; `details.request_id` identifies it in the logs",
    503: "ServiceUnavailable: the database is busy or unreachable; retry after `Retry-After`",
}
INVALID_REQUEST = (
    "InvalidRequest: the body or query is not valid; `details` maps fields to messages"
)
PAYLOAD_TOO_LARGE = "PayloadTooLarge: the request body is larger than the service accepts"
UNSUPPORTED_MEDIA_TYPE = "UnsupportedMediaType: the body is not in a format the route takes"
# Operations that take an Idempotency-Key header (app.idempotency) may also answer these.
IDEMPOTENCY_ERRORS = {
    400: "InvalidRequest: the Idempotency-Key header is not 1 to 255 printable ASCII characters",
    409: "IdempotencyKeyInProgress: the first request with this Idempotency-Key is still "
    "running; retry shortly",
    422: "IdempotencyKeyReused: this Idempotency-Key was used for a different request",
}

HEADERS = {
    "Location": {
        "description": "Where the created resource (or the reset's status) can be read",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying (busy database)",
        "schema": {"type": "integer"},
    },
    "WWW-Authenticate": {
        "description": "The authentication scheme expected: Bearer",
        "schema": {"type": "string"},
    },
}

# The 404 each path parameter can cause, in path order.
NOT_FOUND_CODES = {
    "pipeline_name": "UnknownPipelineName",
    "view_name": "UnknownView",
    "connector_name": "UnknownConnector",
    "api_key_name": "UnknownApiKey",
}

# Query parameters that the route checks itself, so that leaving one out answers the route's
# own error (InvalidResetToken, reason "missing") rather than InvalidRequest.
REQUIRED_QUERY = frozenset({"token"})

# Example values of path parameters: the names the README's walk-through uses.
PATH_EXAMPLES = {"pipeline_name": "orders", "view_name": "totals", "connector_name": "sink1"}

_ACTION_RE = re.compile(r"/(start|stop|pause|resume|restart)$")

_P = "/v0/pipelines/{pipeline_name}"
_C = _P + "/views/{view_name}/connectors/{connector_name}"
# Every operation's operationId: short and stable, so that generated clients get
# functions named like these (reset_connector, get_reset_status...). A new
# operation is added here; tests/test_openapi.py fails for one left out.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("/healthz", "get"): "check_health",
    ("/readyz", "get"): "check_readiness",
    ("/v0/api_keys", "get"): "list_api_keys",
    ("/v0/api_keys", "post"): "create_api_key",
    ("/v0/api_keys/{api_key_name}", "get"): "get_api_key",
    ("/v0/api_keys/{api_key_name}", "delete"): "revoke_api_key",
    ("/v0/pipelines", "get"): "list_pipelines",
    ("/v0/pipelines", "post"): "create_pipeline",
    (_P, "get"): "get_pipeline",
    (_P, "patch"): "update_pipeline",
    (_P, "delete"): "delete_pipeline",
    (_P + "/start", "post"): "start_pipeline",
    (_P + "/stop", "post"): "stop_pipeline",
    (_P + "/pause", "post"): "pause_pipeline",
    (_P + "/resume", "post"): "resume_pipeline",
    (_P + "/restart", "post"): "restart_pipeline",
    (_P + "/reset_status", "get"): "get_reset_status",
    (_P + "/views", "get"): "list_views",
    (_P + "/views", "post"): "add_view",
    (_P + "/views/{view_name}", "delete"): "delete_view",
    (_P + "/views/{view_name}/changes", "post"): "push_changes",
    (_P + "/views/{view_name}/connectors", "get"): "list_connectors",
    (_P + "/views/{view_name}/connectors", "post"): "add_connector",
    (_C, "get"): "get_connector",
    (_C, "delete"): "delete_connector",
    (_C + "/reset", "post"): "reset_connector",
    (_C + "/pause", "post"): "pause_connector",
    (_C + "/start", "post"): "start_connector",
    (_C + "/stats", "get"): "get_connector_stats",
    (_C + "/resets", "get"): "list_connector_resets",
}


def complete_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the document with the shared responses, security and examples added."""
    spec = copy.deepcopy(spec)
    scheme = _ensure_bearer_scheme(spec)
    for path, item in spec.get("paths", {}).items():
        # Routes outside /v0 (health checks) are public: no credentials, no 401/403.
        secured = path.startswith(API_PREFIX)
        _add_path_examples(item.get("parameters", []))
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            operation_id = OPERATION_IDS.get((path, method))
            if operation_id is not None:
                operation["operationId"] = operation_id
            _add_path_examples(operation.get("parameters", []))
            _mark_required_inputs(spec, operation)
            if secured:
                operation.setdefault("security", [{scheme: []}])
            _complete_responses(path, method, operation, secured)
    _model_transports(spec)
    _enumerate_error_codes(spec)
    _drop_unused_schemas(spec)
    return spec


def _enumerate_error_codes(spec: dict[str, Any]) -> None:
    """Make the error body's ``error_code`` the enum of the codes the service answers with."""
    from app.errors import error_codes

    error = spec.get("components", {}).get("schemas", {}).get(ERROR_REF.rsplit("/", 1)[1])
    if error is not None:
        error["properties"]["error_code"]["enum"] = error_codes()


def _transport_schemas() -> dict[str, dict[str, Any]]:
    """The request shape of each transport: its name, and its settings' schema."""
    from app.transports import http

    seconds = {"type": "number", "minimum": 0, "maximum": http.MAX_TIMEOUT}
    backoff = {"type": "number", "minimum": 0, "maximum": http.MAX_BACKOFF}
    return {
        "file": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path"],
            "properties": {
                "path": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The sink file, relative to the tenant's sink folder.",
                    "example": "out/totals.jsonl",
                }
            },
        },
        "http": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": {
                    "type": "string",
                    "description": "http:// or https:// URL the batches are POSTed to.",
                    "example": "http://127.0.0.1:9000/in",
                },
                "timeout": {
                    "description": "Seconds to connect and to read the answer "
                    f"(default {http.DEFAULT_CONNECT_TIMEOUT:g} and "
                    f"{http.DEFAULT_READ_TIMEOUT:g}): one number for both, or each.",
                    "oneOf": [
                        seconds,
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"connect": seconds, "read": seconds},
                        },
                    ],
                },
                "max_retries": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": http.MAX_RETRIES,
                    "description": f"Retries of a batch (default {http.DEFAULT_MAX_RETRIES}).",
                },
                "backoff": {
                    "type": "object",
                    "additionalProperties": False,
                    "description": "Seconds between retries: doubled from base up to cap.",
                    "properties": {"base": backoff, "cap": backoff},
                },
            },
        },
    }


def _model_transports(spec: dict[str, Any]) -> None:
    """Describe a connector's transport as one shape per transport, told apart by ``name``.

    The request schema is a ``oneOf`` with a discriminator, so a generated
    client builds a file or an http transport with its own settings, never
    a bare ``{"name": "file"}`` that the service would refuse.
    """
    schemas = spec.get("components", {}).get("schemas", {})
    if "TransportIn" not in schemas:
        return
    variants = {}
    for name, config in _transport_schemas().items():
        component = f"{name.capitalize()}TransportIn"
        schemas[component] = {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "config"],
            "properties": {"name": {"type": "string", "enum": [name]}, "config": config},
        }
        variants[name] = f"#/components/schemas/{component}"
    schemas["TransportIn"] = {
        "description": "Which transport a connector uses, and its settings.",
        "oneOf": [{"$ref": ref} for ref in variants.values()],
        "discriminator": {"propertyName": "name", "mapping": variants},
    }


def _drop_unused_schemas(spec: dict[str, Any]) -> None:
    """Leave out component schemas nothing refers to (flask-smorest's PaginationMetadata)."""
    schemas = spec.get("components", {}).get("schemas", {})
    while True:
        text = json.dumps(spec)
        unused = [name for name in schemas if text.count(f'"#/components/schemas/{name}"') == 0]
        if not unused:
            return
        for name in unused:
            del schemas[name]


def _ensure_bearer_scheme(spec: dict[str, Any]) -> str:
    """Return the name of the bearer security scheme, declaring one if none is."""
    schemes = spec.setdefault("components", {}).setdefault("securitySchemes", {})
    for name, scheme in schemes.items():
        if scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer":
            return name
    schemes[BEARER_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (`apikey:...`) or a JWT, sent as `Authorization: Bearer ...`",
    }
    return BEARER_SCHEME


def _add_path_examples(parameters: list[dict[str, Any]]) -> None:
    """Give the path parameters the walk-through's names as examples."""
    for parameter in parameters:
        example = PATH_EXAMPLES.get(parameter.get("name", ""))
        if parameter.get("in") == "path" and example is not None:
            parameter.setdefault("example", example)


def _mark_required_inputs(spec: dict[str, Any], operation: dict[str, Any]) -> None:
    """Say which inputs a caller must send, as the service treats them.

    A missing JSON body parses as ``{}``, so a body whose schema requires no
    field may be left out. A parameter of ``REQUIRED_QUERY`` is checked by the
    route itself (to answer its own error code) but must be sent all the same.
    """
    body = operation.get("requestBody")
    if body is not None:
        schema = body.get("content", {}).get("application/json", {}).get("schema", {})
        ref = schema.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            schema = spec["components"]["schemas"].get(ref.rsplit("/", 1)[1], {})
        if schema.get("type") == "object" and not schema.get("required"):
            body["required"] = False
    for parameter in operation.get("parameters", []):
        if parameter.get("in") == "query" and parameter.get("name") in REQUIRED_QUERY:
            parameter["required"] = True


def _validates_input(operation: dict[str, Any]) -> bool:
    """Tell whether the operation validates a body or a query string."""
    query = [p for p in operation.get("parameters", []) if p.get("in") == "query"]
    return "requestBody" in operation or bool(query)


def _complete_responses(path: str, method: str, operation: dict[str, Any], secured: bool) -> None:
    """Add the shared error responses to one operation and examples to all its errors."""
    responses = operation.setdefault("responses", {})
    # flask-smorest documents failed validation as 422; the service answers 400.
    responses.pop("422", None)
    # Every error code is listed explicitly; a catch-all would hide a gap.
    responses.pop("default", None)
    if _validates_input(operation):
        _merge(responses, 400, INVALID_REQUEST)
    if _is_idempotent(operation):
        for code, description in IDEMPOTENCY_ERRORS.items():
            _merge(responses, code, description)
    if "requestBody" in operation:
        _merge(responses, 413, PAYLOAD_TOO_LARGE)
        _merge(responses, 415, UNSUPPORTED_MEDIA_TYPE)
    for code, description in COMMON_ERRORS.items():
        if secured or code != 401:
            _merge(responses, code, description)
    for code, response in responses.items():
        status = int(code)
        if status >= 400:
            _describe_error(path, method, operation, status, response)
        elif status in (201, 202):
            response.setdefault("headers", {}).setdefault("Location", HEADERS["Location"])


def _is_idempotent(operation: dict[str, Any]) -> bool:
    """Tell whether the operation takes an ``Idempotency-Key`` header."""
    return any(
        p.get("in") == "header" and p.get("name") == IDEMPOTENCY_HEADER
        for p in operation.get("parameters", [])
    )


def _merge(responses: dict[str, Any], code: int, description: str) -> None:
    """Add a response with the error body, or extend the description of the route's own."""
    key = str(code)
    existing = responses.get(key)
    if existing is None:
        responses[key] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
        }
    elif description.split(":")[0] not in existing.get("description", ""):
        existing["description"] = f"{existing.get('description', '')}; or {description}"


def _describe_error(
    path: str, method: str, operation: dict[str, Any], status: int, response: dict[str, Any]
) -> None:
    """Attach the error body's schema, headers and examples to an error response."""
    content = response.setdefault("content", {}).setdefault("application/json", {})
    content.setdefault("schema", {"$ref": ERROR_REF})
    codes = _error_codes(path, method, operation, status, response.get("description", ""))
    if codes and "example" not in content:
        content.setdefault(
            "examples", {code: {"value": ERROR_EXAMPLES[code], "summary": code} for code in codes}
        )
    headers = response.setdefault("headers", {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", HEADERS["WWW-Authenticate"])
    elif status == 503:
        headers.setdefault("Retry-After", HEADERS["Retry-After"])
    if not headers:
        del response["headers"]


def _error_codes(
    path: str, method: str, operation: dict[str, Any], status: int, description: str
) -> list[str]:
    """Return the error codes an operation can answer with that status, for the examples."""
    if status == 400:
        has_token = any(p.get("name") == "token" for p in operation.get("parameters", []))
        return ["InvalidResetToken", "InvalidRequest"] if has_token else ["InvalidRequest"]
    if status == 404:
        return [code for name, code in NOT_FOUND_CODES.items() if "{" + name + "}" in path]
    if status == 409:
        if description.startswith("IdempotencyKeyInProgress"):
            # The operation has no 409 of its own.
            return ["IdempotencyKeyInProgress"]
        if _ACTION_RE.search(path):
            if "{connector_name}" in path:
                return ["IllegalConnectorAction"]
            return ["IllegalPipelineAction"]
        codes = []
        if "{pipeline_name}" in path:
            codes.append("PipelineNotStopped")
        if method == "post":
            codes.append("DuplicateName")
        if method == "post" and path.endswith("/connectors"):
            codes.append("SinkInUse")
        if _is_idempotent(operation):
            codes.append("IdempotencyKeyInProgress")
        return codes
    if status == 422:
        return ["IdempotencyKeyReused"]
    if status == 503:
        own = "PipelineNotRunning" in description
        return ["PipelineNotRunning", "ServiceUnavailable"] if own else ["ServiceUnavailable"]
    by_status = {
        401: "AuthenticationFailed",
        403: "InsufficientPermissions",
        410: "PipelineRestarted",
        413: "PayloadTooLarge",
        414: "UriTooLong",
        415: "UnsupportedMediaType",
        500: "InternalError",
    }
    return [by_status[status]] if status in by_status else []
