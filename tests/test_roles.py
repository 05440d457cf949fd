"""The role matrix: every /v0 route and method against every kind of caller.

The routes come from the app's URL map and the role each needs from the
guard's own table (``guard.ROUTE_ROLES``), so a route added without a role
fails here instead of slipping through with a default.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.auth import guard
from app.auth import service as auth_service
from app.auth.models import ApiKey, Role
from app.console import access as console_access
from app.extensions import db
from app.notifications import service as notification_service
from tests.conftest import Api, assert_error

ISSUER = "https://idp.example.test"
AUDIENCE = "pipeline-manager"
HS_SECRET = "a-shared-secret-of-at-least-32-bytes!!"
# What fills each path parameter: things of the default tenant that the fixture creates.
PATH_VALUES = {
    "pipeline_name": "orders",
    "view_name": "totals",
    "connector_name": "sink1",
    "api_key_name": "victim",
    "notification_id": "6f1b5c2e-0d4a-4e8b-9c3f-2a7d8e9b1c40",
}
# Parameters naming something a tenant owns: another tenant's credential gets 404 there.
TENANT_OWNED = {"pipeline_name", "api_key_name", "notification_id"}
CREDENTIAL_ERRORS = (401, 403)
# Valid bodies, so that another tenant's call gets as far as looking the pipeline up
# (a body that fails validation answers 400 whoever owns the pipeline); others send {}.
BODIES: dict[tuple[str, str], Any] = {
    ("pipelines.Pipelines", "POST"): {"name": "new"},
    ("pipelines.PipelineItem", "PATCH"): {"description": "changed"},
    ("pipelines.Views", "POST"): {"name": "extra"},
    ("connectors.Connectors", "POST"): {
        "name": "sink2",
        "transport": {"name": "file", "config": {"path": "out/other.jsonl"}},
    },
    ("view_data.push_changes", "POST"): [{"insert": {"n": 1}}],
    ("api_keys.ApiKeys", "POST"): {"name": "minted", "role": "read"},
}


def _v0_routes() -> list[tuple[str, str, str]]:
    """(rule, method, endpoint) of every /v0 rule and method, from a freshly built app."""
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "k",
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "BACKGROUND_WORKER": False,
        }
    )
    return sorted(
        (rule.rule, method, rule.endpoint)
        for rule in app.url_map.iter_rules()
        if rule.rule == "/v0" or rule.rule.startswith("/v0/")
        for method in rule.methods - {"OPTIONS"}
    )


ROUTES = _v0_routes()


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """JWT on (HS256), for the expired-token column."""
    return {
        **app_config,
        "JWT_HS256_SECRET": HS_SECRET,
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
    }


def _jwt(role: str, exp: int) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "tenant": "default", "role": role, "exp": exp}
    return jwt.encode({**claims, "iat": now - 600}, HS_SECRET, algorithm="HS256")


def _bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture
def callers(app: Flask, make_key, running_pipeline: Api, other_tenant_headers) -> dict[str, dict]:
    """The headers of each kind of caller, on a running pipeline of the default tenant.

    The tenant also has the API key and the notification endpoint PATH_VALUES name.
    """
    make_key("default", "read", name="victim")
    with app.app_context():
        endpoint, _ = notification_service.create_endpoint(
            "default", "http://hooks.example.test/in", ["reset.completed"]
        )
        endpoint.uid = uuid.UUID(PATH_VALUES["notification_id"])
        _, expired_key = auth_service.create_key(
            "default",
            "expired",
            Role.ADMIN,
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
        )
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        db.session.execute(
            sa.update(ApiKey).where(ApiKey.name == "expired").values(expires_at=past)
        )
        db.session.commit()
        db.session.remove()
    return {
        "anonymous": {},
        "expired JWT": _bearer(_jwt(Role.ADMIN, exp=int(time.time()) - 300)),
        "expired key": _bearer(expired_key),
        "another tenant": other_tenant_headers,
        **{role: make_key("default", role) for role in Role.ALL},
    }


def test_every_v0_route_and_method_declares_its_role():
    assert len(ROUTES) >= 20  # the walk really found the API
    missing = [(r, m) for r, m, e in ROUTES if guard.declared_role(e, m) is None]
    assert not missing, f"add these to app.auth.guard.ROUTE_ROLES: {missing}"
    served = {e for _, _, e in ROUTES}
    stale = set(guard.ROUTE_ROLES) - served
    assert not stale, f"ROUTE_ROLES names endpoints that no longer exist: {stale}"


@pytest.mark.parametrize(
    ("rule", "method", "endpoint"), ROUTES, ids=[f"{m} {r}" for r, m, _ in ROUTES]
)
def test_role_matrix(app: Flask, callers, rule: str, method: str, endpoint: str):
    needed = guard.declared_role(endpoint, method)
    assert needed is not None, f"{method} {rule} has no role in app.auth.guard.ROUTE_ROLES"
    arguments = next(r for r in app.url_map.iter_rules() if r.rule == rule).arguments
    unknown = set(arguments) - set(PATH_VALUES)
    assert not unknown, f"give PATH_VALUES a value for {unknown}"
    path = rule
    for name in arguments:
        path = path.replace(f"<{name}>", PATH_VALUES[name])
    client = app.test_client()

    body = BODIES.get((endpoint, method), {})

    def call(caller: str):
        return client.open(path, method=method, json=body, headers=callers[caller])

    for caller in ("anonymous", "expired JWT", "expired key"):
        assert call(caller).status_code == 401, (caller, method, path)
    # Before anything is changed: the default tenant's things all exist.
    response = call("another tenant")
    if set(arguments) & TENANT_OWNED:
        assert response.status_code == 404, ("another tenant", method, path)
    else:
        assert response.status_code not in CREDENTIAL_ERRORS, ("another tenant", method, path)
    # Weakest first, so that a refused call runs before an allowed one changes anything.
    for role in Role.ALL:
        response = call(role)
        if Role.allows(role, needed):
            assert response.status_code not in CREDENTIAL_ERRORS, (role, method, path)
        else:
            body = response.get_json() if method != "HEAD" else None
            assert response.status_code == 403, (role, method, path)
            if body is not None:
                assert body["details"] == {"required_role": needed, "role": role}


def test_the_document_lists_403_exactly_where_a_role_can_refuse(app: Flask, anon_client):
    document = anon_client.get("/openapi.json").get_json()
    for rule, method, endpoint in ROUTES:
        if method == "HEAD":
            continue
        path = rule.replace("<", "{").replace(">", "}")
        responses = document["paths"][path][method.lower()]["responses"]
        refusable = guard.declared_role(endpoint, method) != Role.READ
        assert ("403" in responses) == refusable, (method, rule)


def test_roles_are_ordered():
    assert Role.ALL == ("read", "write", "admin")
    for i, role in enumerate(Role.ALL):
        for j, needed in enumerate(Role.ALL):
            assert Role.allows(role, needed) == (i >= j), (role, needed)
    assert not Role.allows("root", Role.READ)


def test_a_write_key_cannot_mint_a_key(app: Flask, callers):
    response = app.test_client().post(
        "/v0/api_keys", json={"name": "mine", "role": "read"}, headers=callers["write"]
    )
    assert_error(response, 403, "InsufficientPermissions")


# -- the operator console: a signed-in session instead of a bearer credential -----------------

CONSOLE_PATH_VALUES = {
    **PATH_VALUES,
    "action": "pause",
    "unknown": "nothing",
    "filename": "x.css",
    "reset_id": "00000000-0000-4000-8000-000000000000",
}


def _console_routes() -> list[tuple[str, str, str]]:
    """(rule, method, endpoint) of every /console rule and method."""
    app = create_app({"TESTING": True, "SECRET_KEY": "k", "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    return sorted(
        (rule.rule, method, rule.endpoint)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/console")
        for method in rule.methods - {"OPTIONS", "HEAD"}
    )


CONSOLE_ROUTES = _console_routes()


def test_every_console_route_and_method_declares_its_role():
    assert len(CONSOLE_ROUTES) >= 10
    missing = [(r, m) for r, m, e in CONSOLE_ROUTES if console_access.declared_role(e, m) is None]
    assert not missing, f"add these to app.console.access.ROUTE_ROLES: {missing}"
    stale = set(console_access.ROUTE_ROLES) - {e for _, _, e in CONSOLE_ROUTES}
    assert not stale, f"app.console.access.ROUTE_ROLES names endpoints that do not exist: {stale}"


@pytest.mark.parametrize(
    ("rule", "method", "endpoint"),
    [r for r in CONSOLE_ROUTES if console_access.declared_role(r[2], r[1]) != "public"],
    ids=[
        f"{m} {r}" for r, m, e in CONSOLE_ROUTES if console_access.declared_role(e, m) != "public"
    ],
)
def test_console_role_matrix(app: Flask, make_key, running_pipeline: Api, rule, method, endpoint):
    from tests.test_console import Console

    needed = console_access.declared_role(endpoint, method)
    arguments = next(r for r in app.url_map.iter_rules() if r.rule == rule).arguments
    path = rule
    for name in arguments:
        path = re.sub(rf"<(?:[^<>:]+:)?{name}>", CONSOLE_PATH_VALUES[name], path)

    def call(console: Console):
        return console.get(path) if method == "GET" else console.post(path)

    anonymous = Console(app)
    anonymous.get("/console/sign-in")  # a CSRF token: refused for want of a session
    response = call(anonymous)
    assert response.status_code == 303, (method, path)
    assert response.headers["Location"].startswith("/console/sign-in")
    for role in Role.ALL:  # weakest first, as in the /v0 matrix
        console = Console(app)
        console.sign_in(make_key("default", role)["Authorization"].removeprefix("Bearer "))
        console.page("/console/")  # this session's CSRF token
        response = call(console)
        if Role.allows(role, needed):
            assert response.status_code != 403, (role, method, path)
            if endpoint != "console.sign_out":  # which sends there when done
                assert not response.headers.get("Location", "").startswith("/console/sign-in")
        else:
            assert response.status_code == 403, (role, method, path)
