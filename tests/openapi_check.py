"""Every response the test suite sees, checked against the served OpenAPI document.

A strict OAS 3.0 validator (openapi-core) checks each answer of a documented
operation: its status must be documented, its body must match the schema
(``nullable``, ``enum``, ``required``, types...), its content type too. The
suite's thousands of answers then prove the document, which generated clients
trust. Answers of paths the document does not describe (``/docs``, unknown
routes) are not checked.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound

_checkers: dict[str, OpenAPI] = {}


class _Request(WerkzeugOpenAPIRequest):
    """The request side of an answer, without its body (read already; not checked here)."""

    @property
    def body(self) -> bytes:
        return b""


def checker(app: Flask) -> OpenAPI:
    """The validator of an app's document (built once per distinct document)."""
    from app.docs import openapi_document

    document = openapi_document(app)
    key = json.dumps(document, sort_keys=True)
    found = _checkers.get(key)
    if found is None:
        found = _checkers[key] = OpenAPI.from_dict(document)
    return found


def check(app: Flask, response: Any) -> None:
    """Raise AssertionError if ``response`` contradicts the document."""
    if "openapi_spec" not in app.extensions:  # not this service (a bare baseline app)
        return
    request = response.request
    try:
        checker(app).validate_response(_Request(request), WerkzeugOpenAPIResponse(response))
    except (PathNotFound, OperationNotFound):
        return
    except Exception as exc:  # every validation error is a finding
        cause = exc.__cause__
        why = "; ".join(
            str(error.message) for error in getattr(cause, "schema_errors", None) or ()
        ) or repr(cause or exc)
        raise AssertionError(
            f"{request.method} {request.full_path} answered {response.status_code} "
            f"against the OpenAPI document: {why}: {response.get_data(as_text=True)[:300]}"
        ) from exc
