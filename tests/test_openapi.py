"""The OpenAPI document at /openapi.json and the Swagger UI page at /docs."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from flask import Flask

from app.docs import SWAGGER_UI_CONFIG
from app.docs.examples import ERROR_EXAMPLES
from app.docs.openapi import ERROR_REF
from app.docs.operations import OPERATIONS, TAGS
from tests.conftest import assert_error

CONTRACT_404 = {
    "message": "Unknown pipeline name 'non-existent-pipeline'",
    "error_code": "UnknownPipelineName",
    "details": {"pipeline_name": "non-existent-pipeline"},
}
# 403 is documented only where a valid credential can lack the role (tests/test_roles.py).
SHARED_ERRORS = ("401", "500", "503")


@pytest.fixture
def document(anon_client) -> dict:
    """The served document, fetched without credentials."""
    r = anon_client.get("/openapi.json")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    return r.get_json()


def operations(document: dict, public: bool = False):
    """Yield (path, method, operation) of every /v0 operation (and public ones if asked)."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters" and (public or path.startswith("/v0")):
                yield path, method, operation


def _openapi_path(rule: str) -> str:
    """Turn a Flask rule into an OpenAPI path."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_document_lists_every_v0_route_and_method(app: Flask, document):
    served = {
        (_openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v0")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, method, _ in operations(document)}
    assert served == documented


def test_every_operation_has_a_short_stable_unique_operation_id(document):
    """Generated clients name their functions after these (reset_connector, ...)."""
    ids = {}
    for path, method, operation in operations(document, public=True):
        operation_id = operation.get("operationId")
        assert operation_id, f"{method.upper()} {path} has no operationId (OPERATIONS)"
        assert re.fullmatch(r"[a-z]+(_[a-z]+){0,3}", operation_id), operation_id
        ids.setdefault(operation_id, []).append((method, path))
    assert all(len(places) == 1 for places in ids.values()), ids
    assert ids["reset_connector"] == [
        (
            "post",
            "/v0/pipelines/{pipeline_name}/views/{view_name}/connectors/{connector_name}/reset",
        )
    ]
    assert ids["get_reset_status"] == [("get", "/v0/pipelines/{pipeline_name}/reset_status")]


SECTIONS = [
    "Pipelines",
    "Pipeline Lifecycle",
    "View Data",
    "Output Connectors",
    "API Keys",
    "Notifications",
    "Health",
]
RESET_STATUS = "/v0/pipelines/{pipeline_name}/reset_status"
RESET = "/v0/pipelines/{pipeline_name}/views/{view_name}/connectors/{connector_name}/reset"
# Words that name an answer's status without saying what it means.
PLACEHOLDERS = {"", "OK", "Created", "Accepted", "No Content", "Bad Request"}


def test_operations_are_filed_under_human_section_names(document):
    assert [tag["name"] for tag in document["tags"]] == SECTIONS == list(TAGS)
    assert all(tag["description"] for tag in document["tags"])
    filed = {}
    for path, method, operation in operations(document, public=True):
        assert len(operation["tags"]) == 1, (path, method)
        filed.setdefault(operation["tags"][0], set()).add((path, method))
    assert list(filed) != [] and set(filed) == set(SECTIONS)
    connectors = filed["Output Connectors"]
    assert {(RESET, "post"), (RESET_STATUS, "get")} <= connectors
    assert all("/connectors" in path or path.endswith(("/reset_status", "/reset_cancel"))
               for path, _ in connectors)  # fmt: skip
    lifecycle = {path.rsplit("/", 1)[1] for path, _ in filed["Pipeline Lifecycle"]}
    assert lifecycle == {"start", "stop", "pause", "resume", "restart"}
    assert filed["View Data"] == {
        ("/v0/pipelines/{pipeline_name}/views/{view_name}/changes", "post")
    }
    assert all(path.startswith("/v0/api_keys") for path, _ in filed["API Keys"])
    assert all(path.startswith("/v0/notifications") for path, _ in filed["Notifications"])
    assert filed["Health"] == {("/healthz", "get"), ("/readyz", "get")}


def test_every_operation_has_a_title_and_every_answer_a_description(document):
    """A reader sees what an operation does and what each of its answers means."""
    documented = set()
    for path, method, operation in operations(document, public=True):
        documented.add((path, method))
        where = f"{method.upper()} {path}"
        title = operation.get("summary", "")
        assert title, f"{where} has no title (OPERATIONS)"
        assert len(title.split()) <= 5 and not title.endswith("."), (where, title)
        assert all(word[0].isupper() for word in title.split()), (where, title)
        assert operation["responses"], where
        for code, response in operation["responses"].items():
            assert "$ref" not in response, (where, code)
            description = response.get("description", "")
            assert description not in PLACEHOLDERS, f"{where} {code} has no description"
            assert not description.startswith(";"), (where, code, description)
            # More than an error code's name: words a reader can act on.
            assert len(description.split()) >= 3, (where, code, description)
    # Every row of the table is an operation the service has.
    assert set(OPERATIONS) == documented
    titles = [entry.title for entry in OPERATIONS.values()]
    assert len(titles) == len(set(titles))


def test_reset_and_reset_status_read_as_the_reference_does(document):
    reset = document["paths"][RESET]["post"]
    assert reset["summary"] == "Reset Output Connector"
    assert reset["tags"] == ["Output Connectors"]
    operation = document["paths"][RESET_STATUS]["get"]
    assert operation["summary"] == "Check Reset Status"
    assert operation["tags"] == ["Output Connectors"]
    answers = {code: r["description"] for code, r in operation["responses"].items()}
    assert answers["200"] == "Reset token status has been retrieved"
    assert answers["400"].startswith("An invalid reset token was provided")
    assert answers["404"] == "Pipeline with that name does not exist"
    assert "previous incarnation" in answers["410"]
    assert "cannot be validated across incarnations" in answers["410"]
    assert answers["410"].endswith("reissue the reset")
    (token,) = [p for p in operation["parameters"] if p["name"] == "token"]
    assert token["description"].startswith(
        "The reset token returned by the output connector reset endpoint"
    )
    assert token["required"] is True


def test_the_introduction_says_what_the_service_is_how_to_authorize_and_what_a_reset_does(
    document,
):
    from app.resets.models import ResetPhase

    intro = document["info"]["description"]
    assert intro.startswith("The pipeline manager owns the output side of streaming pipelines")
    assert "Bearer" in intro and "JWT" in intro and "API key" in intro
    assert "Authorization: Bearer <credential>" in intro
    assert "pipeline-manager api-keys create NAME --role write" in intro
    # Every phase, in the order a reset goes through them.
    rows = [line for line in intro.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(ResetPhase.ALL)
    for section in SECTIONS:
        assert f"**{section}**" in intro, section


def test_the_introduction_s_key_command_makes_a_key_that_authorizes(app: Flask, document):
    intro = document["info"]["description"]
    (line,) = [line.strip() for line in intro.splitlines() if "api-keys create" in line]
    program, *args = shlex.split(line.replace("NAME", "from-the-docs"))
    assert program == "pipeline-manager"
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    r = app.test_client().get("/v0/pipelines", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200


def test_swagger_ui_shows_this_document_only_without_the_explore_bar(anon_client):
    assert SWAGGER_UI_CONFIG["layout"] == "BaseLayout"  # StandaloneLayout has the top bar
    assert "urls" not in SWAGGER_UI_CONFIG
    html = anon_client.get("/docs/").get_data(as_text=True)
    assert '"layout": "BaseLayout"' in html
    assert '"queryConfigEnabled": false' in html
    assert '"url": "/openapi.json"' in html


def test_every_operation_documents_the_shared_errors_with_the_error_body(document):
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert "default" not in responses, (path, method)
        # Validation answers 400, never 422; a 422 means only a reused Idempotency-Key.
        if "422" in responses:
            headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            assert "Idempotency-Key" in headers, (path, method)
            examples = responses["422"]["content"]["application/json"]["examples"]
            assert set(examples) == {"IdempotencyKeyReused"}, (path, method)
        for code in SHARED_ERRORS:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (path, method, code)
        assert "WWW-Authenticate" in responses["401"]["headers"]
        assert "Retry-After" in responses["503"]["headers"]


def test_public_routes_document_crashes_but_no_credentials(document):
    operation = document["paths"]["/healthz"]["get"]
    assert "security" not in operation
    documented = set(operation["responses"])
    assert {"200", "500", "503"} <= documented <= {"200", "414", "500", "503"}


def test_every_error_response_has_the_error_schema_and_an_example(document):
    for path, method, operation in operations(document, public=True):
        for code, response in operation["responses"].items():
            if int(code) < 400:
                continue
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": ERROR_REF}, (path, method, code)
            examples = content["examples"]
            assert examples, (path, method, code)
            for example in examples.values():
                assert set(example["value"]) == {"message", "error_code", "details"}


def test_validated_bodies_and_queries_document_400_not_422(document):
    for path, method, operation in operations(document):
        query = [p for p in operation.get("parameters", []) if p["in"] == "query"]
        if "requestBody" in operation or query:
            assert "400" in operation["responses"], (path, method)
        if "requestBody" in operation:
            assert "413" in operation["responses"], (path, method)


def test_the_contract_404_example_is_documented(document):
    response = document["paths"]["/v0/pipelines/{pipeline_name}"]["get"]["responses"]["404"]
    examples = response["content"]["application/json"]["examples"]
    assert examples["UnknownPipelineName"]["value"] == CONTRACT_404
    assert ERROR_EXAMPLES["UnknownPipelineName"] == CONTRACT_404


def test_reset_status_documents_every_row_of_the_contract_table(document):
    operation = document["paths"]["/v0/pipelines/{pipeline_name}/reset_status"]["get"]
    responses = operation["responses"]
    # No 403: every valid credential may read (the contract's 403 row cannot happen here).
    assert set(responses) == {"200", "400", "401", "404", "410", "414", "500", "503"}
    assert set(responses["400"]["content"]["application/json"]["examples"]) == {
        "InvalidResetToken",
        "InvalidRequest",
    }
    assert set(responses["503"]["content"]["application/json"]["examples"]) == {
        "PipelineNotRunning",
        "ServiceUnavailable",
    }


def test_bearer_scheme_is_declared_and_required_on_every_v0_operation(document):
    schemes = document["components"]["securitySchemes"]
    bearer = [n for n, s in schemes.items() if s["type"] == "http" and s["scheme"] == "bearer"]
    assert len(bearer) == 1
    required = [{bearer[0]: []}]
    for path, method, operation in operations(document):
        assert operation.get("security", document.get("security")) == required, (path, method)


def test_created_and_accepted_responses_document_location(document):
    reset = "/v0/pipelines/{pipeline_name}/views/{view_name}/connectors/{connector_name}/reset"
    assert "Location" in document["paths"][reset]["post"]["responses"]["202"]["headers"]
    assert "Location" in document["paths"]["/v0/pipelines"]["post"]["responses"]["201"]["headers"]


def test_path_parameters_carry_walkthrough_examples(document):
    parameters = document["paths"]["/v0/pipelines/{pipeline_name}"]["parameters"]
    assert parameters[0]["example"] == "orders"


def test_docs_and_document_are_public(anon_client):
    assert anon_client.get("/openapi.json").status_code == 200
    assert anon_client.get("/docs/").status_code == 200
    r = anon_client.get("/docs")
    assert r.status_code in (301, 308) and r.headers["Location"].endswith("/docs/")


def test_docs_page_loads_only_local_assets(anon_client):
    html = anon_client.get("/docs/").get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith(("/docs/", "/docs-assets/")) for a in assets), assets
    for asset in assets:
        r = anon_client.get(asset)
        assert r.status_code == 200, asset
        r.close()
    # No remote validator badge: the page works offline.
    assert '"validatorUrl": null' in html
    # Kept per tab by the page's own plugin (sessionStorage), not in localStorage.
    assert '"persistAuthorization": false' in html
    assert "/docs-assets/tab-authorization.js" in html
    # Every script is a file of the service: none inline but the settings (JSON data).
    inline = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", html)
    assert inline == [' id="swagger-config" type="application/json"'], inline
    assert '"tryItOutEnabled": true' in html
    assert '"url": "/openapi.json"' in html


def test_swagger_ui_bundle_is_version_5(anon_client):
    html = anon_client.get("/docs/").get_data(as_text=True)
    assert re.search(r'<meta name="version" content="5\.', html)


def test_cli_prints_the_served_document(app: Flask, document):
    result = app.test_cli_runner().invoke(args=["openapi", "print"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == document


def test_every_published_schema_is_used(document):
    """No schema a client generator would turn into a dead class (PaginationMetadata was one)."""
    text = json.dumps(document)
    for name in document["components"]["schemas"]:
        assert f'"#/components/schemas/{name}"' in text, name


def test_a_transport_is_one_shape_per_transport_told_apart_by_name(document):
    schemas = document["components"]["schemas"]
    transport = schemas["TransportIn"]
    assert transport["discriminator"]["propertyName"] == "name"
    from app.transports import TRANSPORTS

    assert set(transport["discriminator"]["mapping"]) == set(TRANSPORTS)
    postgres = schemas["PostgresTransportIn"]["properties"]["config"]
    assert postgres["required"] == ["dsn_env", "table"] and not postgres["additionalProperties"]
    file_config = schemas["FileTransportIn"]["properties"]["config"]
    assert file_config["required"] == ["path"] and not file_config["additionalProperties"]
    assert schemas["HttpTransportIn"]["properties"]["config"]["required"] == ["url"]
    assert schemas["FileTransportIn"]["required"] == ["name", "config"]


def test_a_transport_without_its_settings_is_400(api):
    api.create_pipeline()
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "sink1", "transport": {"name": "file"}},
    )
    body = assert_error(r, 400, "InvalidRequest")
    assert "transport" in json.dumps(body["details"])


def test_error_code_is_the_enum_of_the_codes_the_service_answers_with(document):
    """One list, from the error classes: every error answer the suite sees is checked
    against it (tests/openapi_check.py), so a new code missing from it fails there."""
    from app.errors import ApiError, error_codes

    enum = document["components"]["schemas"]["Error"]["properties"]["error_code"]["enum"]
    assert enum == error_codes()
    assert {"UnknownPipelineName", "InvalidResetToken", "IdempotencyKeyReused"} <= set(enum)
    assert all(cls.error_code in enum for cls in ApiError.__subclasses__())
