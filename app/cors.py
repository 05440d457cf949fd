"""CORS: which other origins' web pages may call the API from a browser.

No origin is allowed unless configured: ``CORS_ORIGINS`` in the instance
config (a list) or ``PIPELINE_MANAGER_CORS_ORIGINS`` in the environment (a
JSON list or a comma-separated string). Allowed origins may send the bearer
credential and a JSON body; they can read the error bodies and the headers
callers script against.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Flask, Response, request
from flask_cors import CORS

# Where browsers of other origins may call: the API and its OpenAPI document.
RESOURCES = r"^/(v0(/.*)?|openapi\.json)$"
_RESOURCES_RE = re.compile(RESOURCES)
ALLOW_HEADERS = ["Authorization", "Content-Type", "X-Request-Id"]
EXPOSE_HEADERS = ["Location", "Retry-After", "X-Request-Id", "WWW-Authenticate", "Allow", "Link"]
METHODS = ["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"]
# Seconds a browser may reuse a preflight answer.
PREFLIGHT_MAX_AGE = 600


def allowed_origins(value: Any) -> list[str]:
    """Normalise the configured origins: a list, a JSON list or a comma-separated string."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"CORS_ORIGINS is not a valid JSON list: {text!r}") from None
        else:
            value = text.split(",")
    if not isinstance(value, list | tuple | set):
        raise ValueError("CORS_ORIGINS must be a list of origins or a comma-separated string")
    # An origin never ends with '/'; a trailing one would silently match nothing.
    return [str(origin).strip().rstrip("/") for origin in value if str(origin).strip()]


def _vary_on_origin(response: Response) -> Response:
    """Tell caches the answer depends on ``Origin`` (flask-cors omits it for a single origin)."""
    if _RESOURCES_RE.match(request.path):
        response.vary.add("Origin")
    return response


def init_app(app: Flask) -> None:
    """Answer CORS preflights and add CORS headers (errors included) for the allowed origins."""
    origins = allowed_origins(app.config.get("CORS_ORIGINS"))
    app.config["CORS_ORIGINS"] = origins
    if not origins:
        return
    CORS(
        app,
        resources={RESOURCES: {"origins": origins}},
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        methods=METHODS,
        max_age=PREFLIGHT_MAX_AGE,
        supports_credentials=False,
        vary_header=True,
    )
    app.after_request(_vary_on_origin)
