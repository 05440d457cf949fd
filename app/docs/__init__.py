"""API documentation: the OpenAPI document at /openapi.json and Swagger UI at /docs.

flask-smorest builds the document from the same schemas and routes that
validate requests; :mod:`app.docs.openapi` adds what every ``/v0`` route
shares. Swagger UI's files come from the flask-swagger-ui package, so the page
works without internet access. Both pages are public.

The page itself is this package's template (``templates/docs/index.html``), not
flask-swagger-ui's: its scripts are files (``static/``), and a plugin keeps the
authorization for the browser tab's life (sessionStorage) instead of Swagger
UI's ``persistAuthorization``, which keeps it in localStorage for every tab and
every later visit.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import Any

from apispec import APISpec
from flask import Blueprint, Flask, Response, current_app, render_template
from flask_swagger_ui import get_swaggerui_blueprint

from app.docs.openapi import complete_spec
from app.web import api

DOCS_URL = "/docs"
OPENAPI_URL = "/openapi.json"
OPENAPI_ENDPOINT = "api-docs.openapi_json"

SWAGGER_UI_CONFIG: dict[str, Any] = {
    "app_name": "Pipeline manager API",
    # The page shows this service's document only: BaseLayout has no top bar (the
    # "Explore" box that loads any URL), and a ?url= query is ignored.
    "layout": "BaseLayout",
    "queryConfigEnabled": False,
    # Not Swagger UI's persistAuthorization (localStorage, shared by every tab
    # and kept for later visits): static/tab-authorization.js keeps the bearer
    # credential across reloads of this tab only (sessionStorage), until Logout.
    "persistAuthorization": False,
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

    Both the served document and ``pipeline-manager openapi print|write`` go through it.
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


# The page's own scripts and template (the Swagger UI files come from flask-swagger-ui).
page = Blueprint(
    "api_docs_page",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/docs-assets",
)


def _swagger_page(swagger_files: Any) -> Any:
    """The ``/docs`` view: this package's page, and Swagger UI's files from flask-swagger-ui."""

    def show(path: str | None = None) -> Any:
        if path and path != "index.html":
            return swagger_files(path=path)
        settings = {k: v for k, v in SWAGGER_UI_CONFIG.items() if k != "app_name"}
        settings.update(dom_id="#swagger-ui", url=OPENAPI_URL)
        return render_template(
            "docs/index.html",
            app_name=SWAGGER_UI_CONFIG["app_name"],
            base_url=DOCS_URL,
            version=version("flask-swagger-ui"),
            config=settings,
        )

    return show


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
    app.register_blueprint(page)
    app.view_functions["docs.show"] = _swagger_page(app.view_functions["docs.show"])
