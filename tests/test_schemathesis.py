"""Contract test generated from the served OpenAPI document.

Schemathesis calls every operation with generated data and real credentials
(an admin API key of the default tenant): no answer may be a 500, and every
answer must have a documented status code, content type, headers and body.
Path parameters and the reset token are drawn, most of the time, from seeded
data so that the calls reach real pipelines, views, connectors and resets.

The app and the schema are built at import time: schemathesis's pytest
fixture loader does not work with the pytest in use.
"""

from __future__ import annotations

import atexit
import datetime as dt
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.meta import ParameterLocation

from app import create_app
from app.auth import service as auth_service
from app.extensions import db

BODY, HEADER = ParameterLocation.BODY, ParameterLocation.HEADER

MAX_EXAMPLES = 25
PIPELINE, VIEW, CONNECTOR = "orders", "totals", "sink1"
SPARE_KEY = "spare-key"
# Stands for the current reset token; the test swaps in the real one before each call.
TOKEN_PLACEHOLDER = "seeded-reset-token"

_workdir = Path(tempfile.mkdtemp(prefix="pipeline-manager-schemathesis-"))
atexit.register(shutil.rmtree, _workdir, ignore_errors=True)

APP = create_app(
    {
        "TESTING": True,
        "SECRET_KEY": "schemathesis-secret-key",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{_workdir / 'test.db'}",
        "SINK_DIR": str(_workdir / "sinks"),
        "BACKGROUND_WORKER": False,
    }
)


def _create_key(name: str) -> str:
    """Create an admin API key of the default tenant through the auth service."""
    with APP.app_context():
        _, key = auth_service.create_key("default", name, "admin")
        db.session.remove()
    return key


with APP.app_context():
    db.create_all()
AUTH = {"Authorization": f"Bearer {_create_key('schemathesis')}"}
# A key the generated calls may look up or revoke without locking the test out.
_create_key(SPARE_KEY)

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20261129,
        "dictionaries": {
            "pipelines": {"values": [PIPELINE]},
            "views": {"values": [VIEW]},
            "connectors": {"values": [CONNECTOR]},
            "tokens": {"values": [TOKEN_PLACEHOLDER]},
            "api_keys": {"values": [SPARE_KEY]},
        },
        "parameters": {
            "path.pipeline_name": {"dictionary": "pipelines", "probability": 0.7},
            "path.view_name": {"dictionary": "views", "probability": 0.7},
            "path.connector_name": {"dictionary": "connectors", "probability": 0.7},
            "path.api_key_name": {"dictionary": "api_keys", "probability": 0.5},
            "query.token": {"dictionary": "tokens", "probability": 0.5},
        },
        "operations": [
            {
                # A made-up token is schema-valid yet refused (400): the token is signed.
                "include-path": "/v0/pipelines/{pipeline_name}/reset_status",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "400", "401", "403", "404", "410", "503"]
                    }
                },
            },
            {
                # The same for a cancel; and a reset that ended answers 409.
                "include-path": "/v0/pipelines/{pipeline_name}/reset_cancel",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": [
                            *("2xx", "400", "401", "403", "404", "409", "410", "503")
                        ]
                    }
                },
            },
            {
                # A delete of a record the view does not hold is schema-valid yet refused.
                "include-path": "/v0/pipelines/{pipeline_name}/views/{view_name}/changes",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "503"]
                    }
                },
            },
        ],
        "generation": {"max-examples": MAX_EXAMPLES},
        "phases": {"stateful": {"enabled": False}},
    }
)
# Newline-delimited changes are documented as a string: send it as text.
schemathesis.serializer.alias(["application/x-ndjson", "application/jsonl"], "text/plain")
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP, config=CONFIG)


def _seed() -> str:
    """Make sure the seeded pipeline, view and connector exist and run; return a fresh token."""
    client = APP.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = AUTH["Authorization"]
    base = f"/v0/pipelines/{PIPELINE}"
    if client.get(base).status_code == 404:
        r = client.post("/v0/pipelines", json={"name": PIPELINE, "views": [VIEW]})
        assert r.status_code == 201, r.get_json()
    status = client.get(base).get_json()["status"]
    if status != "stopped":
        client.post(f"{base}/stop")
    if VIEW not in client.get(base).get_json()["views"]:
        client.post(f"{base}/views", json={"name": VIEW})
    connectors = f"{base}/views/{VIEW}/connectors"
    if client.get(f"{connectors}/{CONNECTOR}").status_code == 404:
        r = client.post(
            connectors,
            json={"name": CONNECTOR, "transport": {"name": "file", "config": {"path": "o.jsonl"}}},
        )
        assert r.status_code == 201, r.get_json()
    assert client.post(f"{base}/start").status_code == 200
    r = client.post(f"{connectors}/{CONNECTOR}/reset")
    assert r.status_code == 202, r.get_json()
    return r.get_json()["token"]


@pytest.fixture(scope="module", autouse=True)
def _release_app():
    """Close the module app's database connections at the end."""
    yield
    with APP.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def token() -> str:
    """A valid reset token of the seeded connector, with the seed data in place."""
    return _seed()


def _fits_the_document(case, location: ParameterLocation) -> bool:
    """Whether schemathesis generated that part of the case to fit the document (positive)."""
    meta = case.meta
    if meta is None:
        return True
    part = meta.components.get(location)
    return (part.mode if part is not None else meta.generation.mode).is_positive


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_conforms_to_its_document(case, token):
    if case.query and case.query.get("token") == TOKEN_PLACEHOLDER:
        case.query["token"] = token
    if isinstance(case.body, dict) and "expires_at" in case.body and _fits_the_document(case, BODY):
        # "In the future" is beyond what a schema says: keep generated expiries ahead of now.
        # A negative case keeps its invalid value (here and below): replaced, it would
        # be valid, and its 201 would read as invalid data accepted.
        case.body["expires_at"] = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    if case.headers and "Idempotency-Key" in case.headers and _fits_the_document(case, HEADER):
        # Each generated case is a new request: one key each (a reused key answers 422).
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    headers = AUTH
    if not _fits_the_document(case, HEADER) and "Authorization" not in (case.headers or {}):
        # The negative case left the credentials out on purpose: adding them back would
        # make it valid, and its 2xx would read as invalid data accepted.
        headers = None
    case.call_and_validate(headers=headers)
