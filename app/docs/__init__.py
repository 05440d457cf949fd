"""API documentation: the OpenAPI document at /openapi.json and Swagger UI at /docs.

flask-smorest builds the document from the same schemas and routes that
validate requests; :mod:`app.docs.openapi` adds what every ``/v0`` route
shares. Swagger UI's files come from the flask-swagger-ui package, so the page
works without internet access. Both pages are public.
"""

from __future__ import annotations

import json
from typing import Any

from apispec import APISpec
from flask import Flask, Response, current_app
from flask_swagger_ui import get_swaggerui_blueprint

from app.docs.openapi import complete_spec
from app.extensions import api

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
OPENAPI_ENDPOINT = "api-docs.openapi_json"

SWAGGER_UI_CONFIG: dict[str, Any] = {
    "app_name": "Pipeline manager API",
    # The page shows this service's document only: BaseLayout has no top bar (the
    # "Explore" box that loads any URL), and a ?url= query is ignored.
    "layout": "BaseLayout",
    "queryConfigEnabled": False,
    # Keep the bearer credential across reloads. Swagger UI keeps it in the
    # browser's localStorage (the only store it offers), until Logout.
    "persistAuthorization": True,
    "tryItOutEnabled": True,
    "displayRequestDuration": True,
    "deepLinking": True,
    # The default validator is a remote service; the page must work offline.
    "validatorUrl": None,
}


def openapi_document(app: Flask) -> dict[str, Any]:
    """Return the app's completed OpenAPI document."""
    return app.extensions["openapi_spec"].to_dict()


def _complete_on_output(spec: APISpec) -> None:
    """Make the spec's ``to_dict`` return the completed document, built once on first use.

    Both the served document and ``flask openapi print|write`` go through it.
    """
    build = spec.to_dict
    built: list[dict[str, Any]] = []

    def to_dict() -> dict[str, Any]:
        """Return the completed document."""
        # Every route is registered once the document is asked for; it never changes after.
        if not built:
            built.append(complete_spec(build()))
        return built[0]

    spec.to_dict = to_dict


def serve_openapi() -> Response:
    """Serve the OpenAPI document"""
    body = json.dumps(openapi_document(current_app), indent=2)
    return current_app.response_class(body, mimetype="application/json")


def init_app(app: Flask) -> None:
    """Serve the completed OpenAPI document and Swagger UI."""
    # The Api extension is shared by every app built in this process; keep this app's spec.
    app.extensions["openapi_spec"] = api.spec
    _complete_on_output(api.spec)
    app.view_functions[OPENAPI_ENDPOINT] = serve_openapi
    app.register_blueprint(
        get_swaggerui_blueprint(DOCS_URL, OPENAPI_URL, config=SWAGGER_UI_CONFIG),
        name="docs",
    )
