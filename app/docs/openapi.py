"""Completing flask-smorest's OpenAPI document with what every route shares.

The routes document their own answers (``@blp.response`` and
``documents_errors``). What every ``/v0`` route can answer whatever it does,
the credentials errors, a crash, a busy database, a body that fails validation,
is added here once, so the document lists every status code a caller can meet
without each route repeating it. Examples of the error body come from one table.

How the reference reads is set here too, in one place: the introduction at the
top, the section (tag) each operation is filed under, its short title, and what
each of its answers means (``OPERATIONS``, ``ERROR_DESCRIPTIONS``).
"""

from __future__ import annotations

import copy
import json
import re
from http import HTTPStatus
from typing import Any, NamedTuple

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

# The sections of the reference, in the order it shows them, and what each holds.
PIPELINES = "Pipelines"
LIFECYCLE = "Pipeline Lifecycle"
VIEW_DATA = "View Data"
OUTPUT_CONNECTORS = "Output Connectors"
API_KEYS = "API Keys"
HEALTH = "Health"
TAGS: dict[str, str] = {
    PIPELINES: "Create, read, change and delete pipelines and declare their output views.",
    LIFECYCLE: "Start, stop, pause, resume and restart a pipeline. Each start of a stopped "
    "pipeline begins a new incarnation.",
    VIEW_DATA: "The changes of a view, pushed by the pipeline's engine.",
    OUTPUT_CONNECTORS: "Output connectors deliver a view's changes to a sink (a file or an "
    "HTTP endpoint): add and remove them, pause and start them, read their delivery "
    "statistics, and reset them (a full snapshot replayed to the sink) and follow the reset.",
    API_KEYS: "API keys of the caller's tenant; 'admin' role only. A key is shown once, when "
    "it is created, and never outranks or outlives the credential that created it.",
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
        "The reset has been accepted: `token` is the reset token that Check Reset Status "
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
}

# The words of a documented answer that say nothing of what it means.
_PLACEHOLDERS = frozenset({status.phrase for status in HTTPStatus} | {"", "Default error response"})

# The introduction at the top of the reference (Markdown).
_INTRODUCTION = """\
The pipeline manager owns the output side of streaming pipelines. A pipeline's
engine, running elsewhere, pushes the changes of its output views here
(**View Data**); each view's **Output Connectors** deliver those changes to a
sink, a file or an HTTP endpoint. **Pipelines** declare the views,
**Pipeline Lifecycle** starts and stops them (each start of a stopped pipeline
begins a new *incarnation*), and **API Keys** manage who may call. **Health**
needs no credentials.

## Authorization

Every `/v0` operation needs a credential, a JWT or an API key, sent as a
Bearer token:

    Authorization: Bearer <credential>

An operator makes an API key on the server's command line; the key is printed
once, and only its hash is kept:

    pipeline-manager api-keys create NAME --role write

`--role` is `read` (may only read), `write` (may also change pipelines and
reset connectors) or `admin` (may also manage API keys); `--tenant` names the
tenant (`default` unless given). A caller with an `admin` credential may also
create keys with **Create API Key**. A JWT is accepted when the service is
configured with the key that signs it; its claims name the tenant and the
role. A caller sees only its tenant's pipelines.

On this page, press **Authorize**, paste the API key (`apikey:...`) or the
JWT, then **Try it out** on any operation. The credential stays authorized
when the page is reloaded, until **Logout** in the same dialog.

## Resets

**Reset Output Connector** makes the connector drop what it had buffered, ask
its sink to reset itself, replay a full snapshot of the view, then stream on.
A reset is asynchronous: its 202 answer holds a reset token, and
**Check Reset Status** (`GET /v0/pipelines/{pipeline_name}/reset_status?token=...`)
reports its progress. A reset goes through these phases:

{phases}

The reset's `status` is `inprogress`, then `complete` or `failed`. An attempt
that fails is retried (`attempts`, the last `error`, `next_attempt_at`) up to
a configured number of attempts. Stopping the pipeline abandons an unfinished
reset: after the next start, a new incarnation, its token answers 410, and the
reset must be issued again (the service itself redoes the snapshot the sink
still owes, as a reset of origin `redo`).
"""


# What happens in each phase of a reset, in order (the introduction's table).
RESET_PHASES = {
    "queued": "The reset waits for a worker. Asking for a reset of the connector again "
    "returns this reset and its token.",
    "resetting_sink": "Nothing streams to the connector any more. A file sink gets a new, "
    "empty file beside the old one; an HTTP sink is sent a reset message.",
    "replaying_snapshot": "The view as of one position of its change log is sent as batches "
    "of inserts: `replayed_records` counts up to `snapshot_records`.",
    "done": "The connector is back in sync at that position (a file sink's new file "
    "replaces the old one) and streams the changes pushed since.",
}
INTRODUCTION = _INTRODUCTION.replace(
    "{phases}",
    "\n".join(
        ["| Phase | What happens |", "|---|---|"]
        + [f"| `{phase}` | {text} |" for phase, text in RESET_PHASES.items()]
    ),
)


def complete_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the document with the shared responses, security and examples added."""
    spec = copy.deepcopy(spec)
    spec.setdefault("info", {}).setdefault("description", INTRODUCTION)
    scheme = _ensure_bearer_scheme(spec)
    for path, item in spec.get("paths", {}).items():
        # Routes outside /v0 (health checks) are public: no credentials, no 401/403.
        secured = path.startswith(API_PREFIX)
        _add_path_examples(item.get("parameters", []))
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            entry = OPERATIONS.get((path, method))
            if entry is not None:
                _present(operation, entry)
            _add_path_examples(operation.get("parameters", []))
            _mark_required_inputs(spec, operation)
            if secured:
                operation.setdefault("security", [{scheme: []}])
            _inline_responses(spec, operation)
            _complete_responses(path, method, operation, secured)
            _describe_answers(path, method, operation, entry)
    _list_tags(spec)
    _model_transports(spec)
    _enumerate_error_codes(spec)
    _drop_unused_components(spec)
    return spec


def _present(operation: dict[str, Any], entry: Operation) -> None:
    """Give an operation its operationId, section and title.

    The route's own one-line summary becomes the description when it has none.
    """
    operation["operationId"] = entry.operation_id
    operation["tags"] = [entry.tag]
    summary = operation.get("summary", "")
    if _words(summary) != _words(entry.title) and not operation.get("description"):
        operation["description"] = summary if summary.endswith(".") else summary + "."
    operation["summary"] = entry.title


def _words(text: str) -> list[str]:
    """The words of a title that carry its meaning ("Get a pipeline": get, pipeline)."""
    return [word for word in text.lower().split() if word not in ("a", "an", "the")]


def _inline_responses(spec: dict[str, Any], operation: dict[str, Any]) -> None:
    """Replace references to shared responses by a copy, so each can be described."""
    shared = spec.get("components", {}).get("responses", {})
    prefix = "#/components/responses/"
    for code, response in operation.get("responses", {}).items():
        ref = response.get("$ref", "")
        if ref.startswith(prefix) and ref[len(prefix) :] in shared:
            inlined = copy.deepcopy(shared[ref[len(prefix) :]])
            inlined.update({k: v for k, v in response.items() if k != "$ref"})
            operation["responses"][code] = inlined


def _describe_answers(
    path: str, method: str, operation: dict[str, Any], entry: Operation | None
) -> None:
    """Say in words what each answer of the operation means (the tables above)."""
    responses = operation.get("responses", {})
    named = [name for name in NOT_FOUND_DESCRIPTIONS if "{" + name + "}" in path]
    for code, response in responses.items():
        status = int(code)
        if entry is not None and 200 <= status < 300:
            response["description"] = entry.answer
        elif status == 404 and named:
            response["description"] = NOT_FOUND_DESCRIPTIONS[named[-1]]
    for status, description in ERROR_DESCRIPTIONS.get((path, method), {}).items():
        responses[str(status)]["description"] = description


def _list_tags(spec: dict[str, Any]) -> None:
    """List the sections the operations are filed under: those of ``TAGS`` first, in order."""
    used = {
        tag
        for item in spec.get("paths", {}).values()
        for method in HTTP_METHODS
        for tag in item.get(method, {}).get("tags", [])
    }
    tags = [{"name": name, "description": text} for name, text in TAGS.items() if name in used]
    tags += [tag for tag in spec.get("tags", []) if tag["name"] in used - set(TAGS)]
    spec["tags"] = tags


def _enumerate_error_codes(spec: dict[str, Any]) -> None:
    """Make the error body's ``error_code`` the enum of the codes the service answers with."""
    from app.errors import error_codes

    error = spec.get("components", {}).get("schemas", {}).get(ERROR_REF.rsplit("/", 1)[1])
    if error is not None:
        error["properties"]["error_code"]["enum"] = error_codes()


def _transport_schemas() -> dict[str, dict[str, Any]]:
    """The settings' schema of each transport, as its driver describes them."""
    from app.transports import TRANSPORTS

    return {name: driver.config_schema() for name, driver in TRANSPORTS.items()}


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


def _drop_unused_components(spec: dict[str, Any]) -> None:
    """Leave out component schemas and responses nothing refers to.

    flask-smorest declares PaginationMetadata, and shared responses that
    :func:`_inline_responses` copied into each operation.
    """
    components = spec.get("components", {})
    while True:
        text = json.dumps(spec)
        unused = [
            (kind, name)
            for kind in ("schemas", "responses")
            for name in components.get(kind, {})
            if f'"#/components/{kind}/{name}"' not in text
        ]
        if not unused:
            break
        for kind, name in unused:
            del components[kind][name]
    if "responses" in components and not components["responses"]:
        del components["responses"]


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
    """Add a response with the error body, or extend the description of the route's own.

    A description that says nothing (flask-smorest's "Bad Request") is replaced.
    """
    key = str(code)
    existing = responses.get(key)
    if existing is None:
        responses[key] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
        }
    elif existing.get("description", "") in _PLACEHOLDERS:
        existing["description"] = description
    elif description.split(":")[0] not in existing["description"]:
        existing["description"] = f"{existing['description']}; or {description}"


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
        if method == "post" and path.endswith(("/pipelines", "/connectors", "/reset")):
            codes.append("QuotaExceeded")
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
