"""Completing flask-smorest's OpenAPI document with what every route shares.

The routes document their own answers (``@blp.response`` and
``documents_errors``). What every ``/v0`` route can answer whatever it does,
the credentials errors, a crash, a busy database, a body that fails validation,
is added here once, so the document lists every status code a caller can meet
without each route repeating it.

The words come from three tables beside this module, each in one place: how
the reference presents every operation (:mod:`app.docs.operations`: its
section, title and what each answer means), the example error bodies
(:mod:`app.docs.examples`) and the introduction at the top
(:mod:`app.docs.introduction`).
"""

from __future__ import annotations

import copy
import json
import re
from http import HTTPStatus
from typing import Any

from app.docs.examples import ERROR_EXAMPLES, PATH_EXAMPLES
from app.docs.introduction import INTRODUCTION
from app.docs.operations import (
    ERROR_DESCRIPTIONS,
    NOT_FOUND_DESCRIPTIONS,
    OPERATIONS,
    TAGS,
    Operation,
)

API_PREFIX = "/v0"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ERROR_REF = "#/components/schemas/Error"
BEARER_SCHEME = "bearerAuth"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

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

_ACTION_RE = re.compile(r"/(start|stop|pause|resume|restart)$")

# The words of a documented answer that say nothing of what it means.
_PLACEHOLDERS = frozenset({status.phrase for status in HTTPStatus} | {"", "Default error response"})


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
    """Say in words what each answer of the operation means (:mod:`app.docs.operations`)."""
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
    """The settings' schema of each transport, from the registry (no driver is loaded)."""
    from app.transports import TRANSPORTS

    return {name: spec.config_schema() for name, spec in TRANSPORTS.items()}


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
