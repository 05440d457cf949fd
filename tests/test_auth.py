"""Authentication and authorization in front of every /v0 route: API keys, JWTs, roles."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from app import create_app
from app.auth import service as auth_service
from app.database import utcnow
from app.extensions import db
from tests.conftest import assert_error

ISSUER = "https://idp.example.test"
AUDIENCE = "pipeline-manager"
HS_SECRET = "a-shared-secret-of-at-least-32-bytes!!"
CHALLENGE = 'Bearer realm="pipeline-manager"'
INVALID_TOKEN_CHALLENGE = 'Bearer realm="pipeline-manager", error="invalid_token"'


# --- keys and tokens ------------------------------------------------------------------------


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    """The identity provider's signing key."""
    return _rsa_key()


@pytest.fixture(scope="module")
def other_rsa_private() -> rsa.RSAPrivateKey:
    """A key the service does not trust."""
    return _rsa_key()


def _public_pem(private: rsa.RSAPrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def app_config(app_config: dict[str, Any], tmp_path: Path, rsa_private) -> dict[str, Any]:
    """JWT on: an HS256 secret and an RS256 public key file in the instance folder."""
    pem = tmp_path / "idp.pem"
    pem.write_bytes(_public_pem(rsa_private))
    return {
        **app_config,
        "JWT_HS256_SECRET": HS_SECRET,
        "JWT_PUBLIC_KEY_FILES": [str(pem)],
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
        "JWT_LEEWAY": 10,
    }


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for tenant default with role write; a change to None drops a claim."""
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "tenant": "default",
        "role": "write",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def rs256(private: rsa.RSAPrivateKey, headers: dict | None = None, **changes: Any) -> str:
    """An RS256 token with the given claim changes."""
    return jwt.encode(claims(**changes), private, algorithm="RS256", headers=headers)


def hs256(secret: bytes | str = HS_SECRET, **changes: Any) -> str:
    """An HS256 token signed with ``secret``, made by hand so that any secret works."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(**changes)).encode())
    key = secret.encode() if isinstance(secret, str) else secret
    signature = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def unsigned(**changes: Any) -> str:
    """An ``alg: none`` token."""

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(**changes))}."


def bearer(credential: str) -> dict[str, str]:
    """The Authorization header of a credential."""
    return {"Authorization": f"Bearer {credential}"}


# --- every /v0 route is guarded ---------------------------------------------------------------


def _v0_calls(app) -> list[tuple[str, str]]:
    """(method, path) of every /v0 rule and method, with placeholder arguments."""
    urls = app.url_map.bind("localhost")
    calls = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v0"):
            continue
        for method in sorted(rule.methods - {"OPTIONS"}):
            values = {arg: "x" for arg in rule.arguments}
            calls.append((method, urls.build(rule.endpoint, values, method=method)))
    return calls


def test_every_v0_route_and_method_refuses_an_anonymous_call(app, anon_client):
    calls = _v0_calls(app)
    assert len(calls) >= 20  # the walk really found the API
    for method, path in calls:
        response = anon_client.open(path, method=method, json={})
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == CHALLENGE
        if method != "HEAD":
            assert_error(response, 401, "AuthenticationFailed")


def test_every_v0_mutation_refuses_a_read_key(app, read_headers):
    client = app.test_client()
    mutations = [(m, p) for m, p in _v0_calls(app) if m not in ("GET", "HEAD")]
    assert len(mutations) >= 10
    for method, path in mutations:
        response = client.open(path, method=method, json={}, headers=read_headers)
        body = assert_error(response, 403, "InsufficientPermissions")
        assert body["details"]["role"] == "read", (method, path)
        assert body["details"]["required_role"] in ("write", "admin"), (method, path)
        assert response.headers["WWW-Authenticate"] == (
            'Bearer realm="pipeline-manager", error="insufficient_scope"'
        )


def test_public_routes_need_no_credentials(app, anon_client):
    assert anon_client.get("/openapi.json").status_code == 200
    assert anon_client.get("/healthz").get_json() == {"status": "ok"}
    for rule in app.url_map.iter_rules():
        # /metrics takes credentials unless METRICS_PUBLIC (tests/test_metrics.py).
        if rule.rule == "/metrics":
            continue
        if not rule.rule.startswith("/v0") and "GET" in rule.methods and not rule.arguments:
            assert anon_client.get(rule.rule).status_code != 401, rule.rule


def test_cors_preflight_is_not_refused(anon_client):
    response = anon_client.options("/v0/pipelines")
    assert response.status_code == 200


def test_healthz_answers_503_when_the_database_is_down(app, anon_client, monkeypatch):
    with app.app_context():
        engine = db.engine
    dbapi_error = engine.dialect.loaded_dbapi.OperationalError

    def down(*args, **kwargs):
        # What the driver raises when it cannot reach the database.
        raise dbapi_error("unable to open database file")

    engine.dispose()
    monkeypatch.setattr(engine, "raw_connection", down)
    monkeypatch.setattr(engine.pool, "connect", down)
    response = anon_client.get("/healthz")
    body = assert_error(response, 503, "ServiceUnavailable")
    assert response.headers["Retry-After"] == "1"
    assert "unable" not in body["message"]


def test_openapi_marks_v0_operations_as_bearer_secured(anon_client):
    spec = anon_client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path.startswith("/v0"):
                assert operation["security"] == [{"bearerAuth": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
            else:
                assert not operation.get("security"), (method, path)


# --- API keys --------------------------------------------------------------------------------


def test_a_write_key_reads_and_writes(app, make_key):
    client, writer = app.test_client(), make_key("default", "write")
    assert client.post("/v0/pipelines", json={"name": "p"}, headers=writer).status_code == 201
    assert client.get("/v0/pipelines/p", headers=writer).status_code == 200


def test_a_read_key_reads(client, read_headers, api):
    api.create_pipeline()
    for path in ("/v0/pipelines", "/v0/pipelines/orders", "/v0/pipelines/orders/views"):
        assert client.get(path, headers=read_headers).status_code == 200, path
    assert client.head("/v0/pipelines", headers=read_headers).status_code == 200


def test_a_read_key_can_poll_reset_status(running_pipeline, read_headers):
    token = running_pipeline.reset()
    response = running_pipeline.client.get(
        "/v0/pipelines/orders/reset_status", query_string={"token": token}, headers=read_headers
    )
    assert response.status_code == 200, response.get_json()


MUTATIONS = [
    ("post", "/v0/pipelines", {"name": "new"}),
    ("patch", "/v0/pipelines/orders", {"description": "changed"}),
    ("delete", "/v0/pipelines/orders", None),
    ("post", "/v0/pipelines/orders/start", None),
    ("post", "/v0/pipelines/orders/stop", None),
    ("post", "/v0/pipelines/orders/pause", None),
    ("post", "/v0/pipelines/orders/resume", None),
    ("post", "/v0/pipelines/orders/views", {"name": "extra"}),
    ("delete", "/v0/pipelines/orders/views/totals", None),
    (
        "post",
        "/v0/pipelines/orders/views/totals/connectors",
        {"name": "sink2", "transport": {"name": "file", "config": {"path": "x.jsonl"}}},
    ),
    ("delete", "/v0/pipelines/orders/views/totals/connectors/sink1", None),
    ("post", "/v0/pipelines/orders/views/totals/connectors/sink1/reset", None),
    ("post", "/v0/pipelines/orders/views/totals/changes", [{"insert": {"n": 1}}]),
    ("post", "/v0/api_keys", {"name": "mine", "role": "write"}),
    ("delete", "/v0/api_keys/{a_key}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_a_read_key_cannot_mutate(running_pipeline, read_headers, method, path, body):
    client = running_pipeline.client
    before = client.get("/v0/pipelines/orders").get_json()
    path = path.format(a_key=client.get("/v0/api_keys").get_json()[0]["name"])
    response = client.open(path, method=method.upper(), json=body, headers=read_headers)
    assert_error(response, 403, "InsufficientPermissions")
    assert client.get("/v0/pipelines/orders").get_json() == before
    assert len(client.get("/v0/api_keys").get_json()) == 2


@pytest.mark.parametrize(
    ("credential", "reason"),
    [
        ("apikey:" + "A" * 43, "invalid_key"),
        ("apikey:short", "malformed"),
        ("apikey:" + "A" * 42 + "!", "malformed"),
        ("apikey:" + "A" * 44, "malformed"),
        ("not-a-key-nor-a-jwt", "malformed"),
        ("a.b.c", "malformed"),
    ],
)
def test_unknown_or_malformed_credentials_answer_401(anon_client, credential, reason):
    response = anon_client.get("/v0/pipelines", headers=bearer(credential))
    body = assert_error(response, 401, "AuthenticationFailed")
    assert body["details"]["reason"] == reason
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN_CHALLENGE


@pytest.mark.parametrize(
    ("header", "reason"),
    [(None, "missing"), ("", "missing"), ("Basic dXNlcjpwYXNz", "wrong_scheme")],
)
def test_missing_credentials_answer_401_without_an_error_code(anon_client, header, reason):
    headers = {} if header is None else {"Authorization": header}
    response = anon_client.get("/v0/pipelines", headers=headers)
    body = assert_error(response, 401, "AuthenticationFailed")
    assert body["details"]["reason"] == reason
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert "Bearer" in body["message"]


def test_bearer_scheme_name_is_case_insensitive(app, auth_headers):
    key = auth_headers["Authorization"].split(" ", 1)[1]
    response = app.test_client().get("/v0/pipelines", headers={"Authorization": f"bearer {key}"})
    assert response.status_code == 200


def test_a_revoked_key_answers_like_an_unknown_one(app, client, make_key):
    headers = make_key("default", "read", name="short-lived")
    other = app.test_client()
    assert other.get("/v0/pipelines", headers=headers).status_code == 200
    assert client.delete("/v0/api_keys/short-lived").status_code == 204
    revoked = other.get("/v0/pipelines", headers=headers)
    unknown = other.get("/v0/pipelines", headers=bearer("apikey:" + "B" * 43))
    assert assert_error(revoked, 401, "AuthenticationFailed") == assert_error(
        unknown, 401, "AuthenticationFailed"
    )


def test_the_principal_is_the_key_s_tenant_and_role(app, make_key):
    from flask import g

    headers = make_key("acme", "read", name="acme-reader")
    with app.test_client() as client:
        assert client.get("/v0/pipelines", headers=headers).status_code == 200
        assert g.principal.tenant == "acme"
        assert g.principal.role == "read"
        assert g.principal.name == "apikey:acme-reader"


# --- JWT -------------------------------------------------------------------------------------


def test_a_valid_rs256_jwt_acts_for_its_tenant_and_role(app, rsa_private):
    client = app.test_client()
    writer = bearer(rs256(rsa_private, tenant="acme"))
    assert client.post("/v0/pipelines", json={"name": "p"}, headers=writer).status_code == 201
    reader = bearer(rs256(rsa_private, tenant="acme", role="read"))
    assert [p["name"] for p in client.get("/v0/pipelines", headers=reader).get_json()] == ["p"]
    assert_error(client.delete("/v0/pipelines/p", headers=reader), 403, "InsufficientPermissions")
    # Tenant default does not see acme's pipeline.
    default = bearer(rs256(rsa_private))
    assert client.get("/v0/pipelines", headers=default).get_json() == []


def test_a_valid_hs256_jwt_is_accepted(app):
    response = app.test_client().get("/v0/pipelines", headers=bearer(hs256(role="read")))
    assert response.status_code == 200, response.get_json()


def test_a_role_claim_may_be_a_list(app, rsa_private):
    token = rs256(rsa_private, role=["read", "write"])
    response = app.test_client().post("/v0/pipelines", json={"name": "p"}, headers=bearer(token))
    assert response.status_code == 201
    # The strongest role of the list counts.
    admin = bearer(rs256(rsa_private, role=["read", "admin", "nonsense"]))
    assert app.test_client().get("/v0/api_keys", headers=admin).status_code == 200


def test_a_role_claim_may_be_admin(app, rsa_private):
    client = app.test_client()
    admin, writer = bearer(rs256(rsa_private, role="admin")), bearer(rs256(rsa_private))
    assert client.get("/v0/api_keys", headers=admin).status_code == 200
    assert client.post("/v0/pipelines", json={"name": "p"}, headers=admin).status_code == 201
    body = assert_error(client.get("/v0/api_keys", headers=writer), 403, "InsufficientPermissions")
    assert body["details"] == {"required_role": "admin", "role": "write"}


def test_the_principal_of_a_jwt_expires_at_its_exp(app, rsa_private):
    from flask import g

    exp = int(time.time()) + 123
    with app.test_client() as client:
        assert (
            client.get("/v0/pipelines", headers=bearer(rs256(rsa_private, exp=exp))).status_code
            == 200
        )
        assert g.principal.expires_at.timestamp() == exp


def test_an_admin_jwt_without_exp_is_refused(anon_client, rsa_private):
    """exp is required of every JWT, so no JWT can mint a key that never expires."""
    token = rs256(rsa_private, role="admin", exp=None)
    body = assert_error(
        anon_client.get("/v0/api_keys", headers=bearer(token)), 401, "AuthenticationFailed"
    )
    assert body["details"] == {"reason": "missing_claim", "claim": "exp"}


def test_an_exp_out_of_range_is_refused(anon_client, rsa_private):
    token = rs256(rsa_private, exp=10**20)
    body = assert_error(
        anon_client.get("/v0/pipelines", headers=bearer(token)), 401, "AuthenticationFailed"
    )
    assert body["details"]["reason"] == "invalid_claim"


def _rejected_jwt_cases(rsa_private, other_rsa_private) -> dict[str, tuple[str, str]]:
    now = int(time.time())
    public_pem = _public_pem(rsa_private)
    return {
        "expired": (rs256(rsa_private, exp=now - 60, iat=now - 600, nbf=now - 600), "expired"),
        "not yet valid (nbf)": (rs256(rsa_private, nbf=now + 120), "not_yet_valid"),
        "not yet valid (iat)": (rs256(rsa_private, iat=now + 120), "not_yet_valid"),
        "no exp": (rs256(rsa_private, exp=None), "missing_claim"),
        "wrong RSA key": (rs256(other_rsa_private), "bad_signature"),
        "wrong HS256 secret": (hs256("another-secret-that-is-long-enough!!!"), "bad_signature"),
        "HS256 signed with the RS256 public key": (hs256(public_pem), "bad_signature"),
        "alg none": (unsigned(), "algorithm_not_allowed"),
        "wrong issuer": (rs256(rsa_private, iss="https://evil.example.test"), "wrong_issuer"),
        "no issuer": (rs256(rsa_private, iss=None), "missing_claim"),
        "wrong audience": (rs256(rsa_private, aud="another-service"), "wrong_audience"),
        "missing tenant claim": (rs256(rsa_private, tenant=None), "missing_claim"),
        "bad tenant claim": (rs256(rsa_private, tenant="a/b"), "invalid_claim"),
        "missing role claim": (rs256(rsa_private, role=None), "missing_claim"),
        "unknown role": (rs256(rsa_private, role="owner"), "invalid_claim"),
        "tampered payload": (rs256(rsa_private)[:-8] + "AAAAAAAA", "bad_signature"),
    }


CASES = [
    "expired",
    "not yet valid (nbf)",
    "not yet valid (iat)",
    "no exp",
    "wrong RSA key",
    "wrong HS256 secret",
    "HS256 signed with the RS256 public key",
    "alg none",
    "wrong issuer",
    "no issuer",
    "wrong audience",
    "missing tenant claim",
    "bad tenant claim",
    "missing role claim",
    "unknown role",
    "tampered payload",
]


@pytest.mark.parametrize("case", CASES)
def test_a_rejected_jwt_answers_401(anon_client, rsa_private, other_rsa_private, case):
    token, reason = _rejected_jwt_cases(rsa_private, other_rsa_private)[case]
    response = anon_client.get("/v0/pipelines", headers=bearer(token))
    body = assert_error(response, 401, "AuthenticationFailed")
    assert body["details"]["reason"] == reason, body
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN_CHALLENGE


def test_the_missing_claim_is_named(anon_client, rsa_private):
    body = anon_client.get(
        "/v0/pipelines", headers=bearer(rs256(rsa_private, tenant=None))
    ).get_json()
    assert body["details"]["claim"] == "tenant"
    assert "'tenant'" in body["message"]


def test_clock_skew_within_the_leeway_is_accepted(anon_client, rsa_private):
    now = int(time.time())
    token = rs256(rsa_private, nbf=now + 5, iat=now + 5, exp=now - 5)
    assert anon_client.get("/v0/pipelines", headers=bearer(token)).status_code == 200


def _rs256_only_app(tmp_path: Path, rsa_private, **config: Any):
    pem = tmp_path / "instance-key.pem"
    pem.write_bytes(_public_pem(rsa_private))
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "k",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'rs.db'}",
            "BACKGROUND_WORKER": False,
            "JWT_PUBLIC_KEY_FILES": str(pem),
            "JWT_ISSUER": ISSUER,
            "JWT_AUDIENCE": AUDIENCE,
            **config,
        }
    )
    with app.app_context():
        db.create_all()
    return app


def test_hs256_is_refused_when_only_rsa_keys_are_configured(tmp_path, rsa_private):
    app = _rs256_only_app(tmp_path, rsa_private)
    client = app.test_client()
    assert client.get("/v0/pipelines", headers=bearer(rs256(rsa_private))).status_code == 200
    # The classic algorithm confusion: the public key used as an HMAC secret.
    forged = hs256(_public_pem(rsa_private))
    body = assert_error(
        client.get("/v0/pipelines", headers=bearer(forged)), 401, "AuthenticationFailed"
    )
    assert body["details"]["reason"] == "algorithm_not_allowed"
    assert body["details"]["allowed_algorithms"] == ["RS256"]
    with app.app_context():
        db.engine.dispose()


def test_jwks_file_keys_are_chosen_by_kid(tmp_path, rsa_private, other_rsa_private):
    jwks = {
        "keys": [
            {**jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key(), as_dict=True), "kid": kid}
            for kid, k in (("k1", rsa_private), ("k2", other_rsa_private))
        ]
    }
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_text(json.dumps(jwks))
    app = _rs256_only_app(tmp_path, rsa_private, JWT_JWKS_FILE=str(jwks_path))
    client = app.test_client()
    for kid, key in (("k1", rsa_private), ("k2", other_rsa_private)):
        token = rs256(key, headers={"kid": kid})
        assert client.get("/v0/pipelines", headers=bearer(token)).status_code == 200, kid
    wrong_kid = rs256(other_rsa_private, headers={"kid": "k1"})
    assert client.get("/v0/pipelines", headers=bearer(wrong_kid)).status_code == 401
    with app.app_context():
        db.engine.dispose()


def test_jwt_keys_are_parsed_once_at_start_up(app, rsa_private, monkeypatch):
    import jwt
    from cryptography.hazmat.primitives import serialization

    def no_parsing(*args, **kwargs):
        raise AssertionError("key parsed on the request path")

    # app.auth.jwt imports them where it uses them (the app starts without them).
    monkeypatch.setattr(serialization, "load_pem_public_key", no_parsing)
    monkeypatch.setattr(jwt.PyJWK, "from_dict", no_parsing)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/v0/pipelines", headers=bearer(rs256(rsa_private))).status_code == 200


def test_jwts_are_not_accepted_when_jwt_is_not_configured(tmp_path, rsa_private):
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "k",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'nojwt.db'}",
            "BACKGROUND_WORKER": False,
        }
    )
    assert app.extensions["jwt_verifier"] is None
    with app.app_context():
        db.create_all()
    response = app.test_client().get("/v0/pipelines", headers=bearer(rs256(rsa_private)))
    body = assert_error(response, 401, "AuthenticationFailed")
    assert "apikey:" in body["message"]
    with app.app_context():
        db.engine.dispose()


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ({"JWT_HS256_SECRET": "short"}, "at least 32 bytes"),
        ({"JWT_HS256_SECRET": HS_SECRET, "JWT_ISSUER": None}, "JWT_ISSUER"),
        ({"JWT_HS256_SECRET": HS_SECRET, "JWT_AUDIENCE": None}, "JWT_AUDIENCE"),
    ],
)
def test_unsafe_jwt_settings_stop_the_start_up(tmp_path, config, complaint):
    settings = {
        "TESTING": True,
        "SECRET_KEY": "k",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'bad.db'}",
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
        **config,
    }
    with pytest.raises(RuntimeError, match=complaint):
        create_app(settings)


# -- the per-process key cache (API_KEY_CACHE_SECONDS) ---------------------------


def _key_lookups(app: Flask, call) -> int:
    """Run ``call``; return how many times it read the api_keys table."""
    seen: list[str] = []

    def count(conn, cursor, statement, *args):
        if "FROM api_keys" in statement:
            seen.append(statement)

    with app.app_context():
        engine = db.engine
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        call()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return len(seen)


def test_a_checked_key_is_remembered_for_the_cache_period(app, make_key):
    headers = make_key("default", "read", name="poller")
    client = app.test_client()
    assert _key_lookups(app, lambda: client.get("/v0/pipelines", headers=headers)) == 1
    # Within API_KEY_CACHE_SECONDS (2 by default) this process asks the database no more.
    assert _key_lookups(app, lambda: client.get("/v0/pipelines", headers=headers)) == 0


def test_a_key_revoked_by_another_process_stops_within_the_cache_period(app_config, make_key):
    """Two apps on one database stand for two serving processes."""
    cached = create_app(app_config)
    now = [0.0]
    cached.extensions["api_key_cache"] = auth_service.KeyCache(2.0, clock=lambda: now[0])
    headers = make_key("default", "read", name="leaked")
    other = cached.test_client()
    assert other.get("/v0/pipelines", headers=headers).status_code == 200
    revoker = create_app(app_config)
    with revoker.app_context():
        auth_service.revoke_key("default", "leaked")
        db.session.remove()
    # The other process still remembers the key for at most the cache period...
    now[0] = 1.9
    assert other.get("/v0/pipelines", headers=headers).status_code == 200
    now[0] = 2.1
    # ...then looks it up again and finds it gone.
    assert_error(other.get("/v0/pipelines", headers=headers), 401, "AuthenticationFailed")
    for each in (cached, revoker):
        with each.app_context():
            db.engine.dispose()


def test_with_the_cache_off_a_revocation_elsewhere_is_seen_at_once(app_config, make_key):
    uncached = create_app({**app_config, "API_KEY_CACHE_SECONDS": 0})
    headers = make_key("default", "read", name="leaked")
    other = uncached.test_client()
    assert other.get("/v0/pipelines", headers=headers).status_code == 200
    revoker = create_app(app_config)
    with revoker.app_context():
        auth_service.revoke_key("default", "leaked")
        db.session.remove()
    assert_error(other.get("/v0/pipelines", headers=headers), 401, "AuthenticationFailed")
    for each in (uncached, revoker):
        with each.app_context():
            db.engine.dispose()


def test_an_expired_key_is_refused_even_while_remembered(app, make_key):
    from app.auth.models import ApiKey

    headers = make_key("default", "read", name="soon")
    client = app.test_client()
    assert client.get("/v0/pipelines", headers=headers).status_code == 200
    with app.app_context():
        key_hash = auth_service.hash_key(headers["Authorization"].split(" ", 1)[1])
        remembered = auth_service.key_cache().get(key_hash)
        assert remembered is not None
        past = utcnow() - dt.timedelta(seconds=1)
        # The cache holds what the row said; expiry is checked against it on every request.
        auth_service.key_cache().put(key_hash, remembered._replace(expires_at=past))
        assert db.session.get(ApiKey, remembered.id) is not None
    body = assert_error(client.get("/v0/pipelines", headers=headers), 401, "AuthenticationFailed")
    assert body["details"]["reason"] == "expired"
