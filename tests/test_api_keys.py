"""API keys: the /v0/api_keys routes, the `flask api-keys` commands and how keys are stored."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from sqlalchemy import event

from app.auth import service
from app.auth.models import ApiKey
from app.extensions import db
from tests.conftest import assert_error, sqlite_only

KEY_RE = re.compile(r"^apikey:[A-Za-z0-9_-]{43}$")
ISSUER = "https://idp.example.test"
AUDIENCE = "pipeline-manager"
HS_SECRET = "a-shared-secret-of-at-least-32-bytes!!"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """JWT on (HS256), for keys made with a token."""
    return {
        **app_config,
        "JWT_HS256_SECRET": HS_SECRET,
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
    }


def token(role: str = "admin", exp: int | None = None, tenant: str = "default") -> str:
    """An HS256 JWT for the tenant with that role, expiring at ``exp`` (default: in 5 min)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "tenant": tenant, "role": role, "iat": now}
    claims["exp"] = exp if exp is not None else now + 300
    return jwt.encode(claims, HS_SECRET, algorithm="HS256")


def bearer(key: str) -> dict[str, str]:
    """The Authorization header of a key."""
    return {"Authorization": f"Bearer {key}"}


def iso(when: dt.datetime) -> str:
    """A time as the API takes it."""
    return when.isoformat(timespec="seconds")


def parse(value: str) -> dt.datetime:
    """A time as the API shows it."""
    return dt.datetime.fromisoformat(value)


def utc_in(seconds: float) -> dt.datetime:
    """The time that many seconds from now, in UTC."""
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


# --- routes ----------------------------------------------------------------------------------


def test_create_returns_the_key_once(client, anon_client):
    response = client.post("/v0/api_keys", json={"name": "ci", "role": "read"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert KEY_RE.match(body["key"])
    assert body["name"] == "ci" and body["role"] == "read" and body["tenant"] == "default"
    assert body["key"].startswith(body["prefix"]) and len(body["prefix"]) < 20
    assert body["last_used_at"] is None
    assert response.headers["Location"] == "/v0/api_keys/ci"
    assert response.headers["Cache-Control"] == "no-store"
    # The new key works, and nothing ever shows it again.
    assert anon_client.get("/v0/pipelines", headers=bearer(body["key"])).status_code == 200
    assert "key" not in client.get("/v0/api_keys/ci").get_json()
    assert all("key" not in k for k in client.get("/v0/api_keys").get_json())


def test_keys_default_to_the_read_role(client):
    assert client.post("/v0/api_keys", json={"name": "r"}).get_json()["role"] == "read"


def test_list_shows_the_tenant_s_keys_by_name(client):
    for name in ("b", "a"):
        client.post("/v0/api_keys", json={"name": name})
    names = [k["name"] for k in client.get("/v0/api_keys").get_json()]
    assert names == sorted(names) and {"a", "b"} <= set(names)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "bad name"},
        {"name": "x", "role": "root"},
        {"name": "x", "extra": 1},
        {"name": "x", "expires_at": "2030-01-01T00:00:00"},  # no time zone
        {"name": "x", "expires_at": "tomorrow"},
        {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},  # in the past
    ],
)
def test_create_refuses_invalid_input(client, body):
    assert_error(client.post("/v0/api_keys", json=body), 400, "InvalidRequest")


def test_create_refuses_a_duplicate_name(client):
    assert client.post("/v0/api_keys", json={"name": "dup"}).status_code == 201
    body = assert_error(client.post("/v0/api_keys", json={"name": "dup"}), 409, "DuplicateName")
    assert body["details"] == {"api_key_name": "dup"}


def test_revoke_stops_the_key_at_once(client, anon_client):
    key = client.post("/v0/api_keys", json={"name": "gone"}).get_json()["key"]
    assert anon_client.get("/v0/pipelines", headers=bearer(key)).status_code == 200
    assert client.delete("/v0/api_keys/gone").status_code == 204
    assert_error(anon_client.get("/v0/pipelines", headers=bearer(key)), 401, "AuthenticationFailed")
    assert_error(client.get("/v0/api_keys/gone"), 404, "UnknownApiKey")
    assert_error(client.delete("/v0/api_keys/gone"), 404, "UnknownApiKey")


def test_a_revoked_name_can_be_used_again(client):
    client.post("/v0/api_keys", json={"name": "again"})
    client.delete("/v0/api_keys/again")
    assert client.post("/v0/api_keys", json={"name": "again"}).status_code == 201


# --- who may manage keys, and what they may mint ----------------------------------------------


@pytest.mark.parametrize("role", ["read", "write"])
def test_only_an_admin_manages_keys(app, client, make_key, role):
    """A leaked write key can neither mint a successor nor revoke the keys of its tenant."""
    headers = make_key("default", role, name="weak")
    weak = app.test_client()
    calls = [
        ("GET", "/v0/api_keys", None),
        ("POST", "/v0/api_keys", {"name": "successor", "role": "read"}),
        ("GET", "/v0/api_keys/weak", None),
        ("DELETE", "/v0/api_keys/weak", None),
    ]
    for method, path, body in calls:
        response = weak.open(path, method=method, json=body, headers=headers)
        error = assert_error(response, 403, "InsufficientPermissions")
        assert error["details"] == {"required_role": "admin", "role": role}, (method, path)
    assert {k["name"] for k in client.get("/v0/api_keys").get_json()} >= {"weak"}
    assert_error(client.get("/v0/api_keys/successor"), 404, "UnknownApiKey")
    # The admin revokes the leaked key: its holder is out.
    assert client.delete("/v0/api_keys/weak").status_code == 204
    assert weak.get("/v0/pipelines", headers=headers).status_code == 401


@pytest.mark.parametrize("role", ["read", "write", "admin"])
def test_an_admin_key_creates_keys_of_every_role(client, anon_client, role):
    created = client.post("/v0/api_keys", json={"name": f"k-{role}", "role": role}).get_json()
    assert created["role"] == role and created["expires_at"] is None
    listed = anon_client.get("/v0/api_keys", headers=bearer(created["key"]))
    assert listed.status_code == (200 if role == "admin" else 403)


def test_a_key_made_by_an_expiring_admin_key_expires_no_later(app, client, anon_client):
    limit = utc_in(3600).replace(microsecond=0)
    admin = client.post(
        "/v0/api_keys", json={"name": "temp-admin", "role": "admin", "expires_at": iso(limit)}
    ).get_json()
    assert parse(admin["expires_at"]) == limit
    headers = bearer(admin["key"])
    # Asked for nothing: it inherits the creator's expiry.
    inherited = anon_client.post("/v0/api_keys", json={"name": "i"}, headers=headers).get_json()
    assert parse(inherited["expires_at"]) == limit
    # Earlier is fine; later, or never, is not.
    earlier = iso(limit - dt.timedelta(minutes=5))
    response = anon_client.post(
        "/v0/api_keys", json={"name": "e", "expires_at": earlier}, headers=headers
    )
    assert response.status_code == 201 and parse(response.get_json()["expires_at"]) < limit
    later = iso(limit + dt.timedelta(seconds=1))
    response = anon_client.post(
        "/v0/api_keys", json={"name": "l", "role": "admin", "expires_at": later}, headers=headers
    )
    body = assert_error(response, 403, "InsufficientPermissions")
    assert parse(body["details"]["credential_expires_at"]) == limit
    assert_error(client.get("/v0/api_keys/l"), 404, "UnknownApiKey")


def test_a_key_made_with_a_jwt_expires_no_later_than_the_jwt(anon_client):
    exp = int(time.time()) + 600
    headers = bearer(token("admin", exp=exp))
    made = anon_client.post("/v0/api_keys", json={"name": "j", "role": "admin"}, headers=headers)
    assert made.status_code == 201, made.get_json()
    assert parse(made.get_json()["expires_at"]).timestamp() <= exp
    key_headers = bearer(made.get_json()["key"])
    assert anon_client.get("/v0/api_keys", headers=key_headers).status_code == 200
    too_late = dt.datetime.fromtimestamp(exp + 60, dt.UTC)
    response = anon_client.post(
        "/v0/api_keys", json={"name": "late", "expires_at": iso(too_late)}, headers=headers
    )
    assert_error(response, 403, "InsufficientPermissions")
    # And a key made with that key is bound by the same exp.
    grandchild = anon_client.post("/v0/api_keys", json={"name": "g"}, headers=key_headers)
    assert parse(grandchild.get_json()["expires_at"]).timestamp() <= exp


@pytest.mark.parametrize("role", ["read", "write"])
def test_a_non_admin_jwt_cannot_create_keys(anon_client, role):
    response = anon_client.post("/v0/api_keys", json={"name": "x"}, headers=bearer(token(role)))
    assert_error(response, 403, "InsufficientPermissions")


def test_a_key_never_outranks_its_creator(app):
    """The rule holds in the service too, whatever the route's guard says."""
    from app.auth import Principal
    from app.errors import InsufficientPermissions

    writer = Principal(name="apikey:w", tenant="default", role="write")
    with app.app_context(), pytest.raises(InsufficientPermissions):
        service.create_key("default", "up", "admin", creator=writer)
    with app.app_context():
        api_key, _ = service.create_key("default", "same", "write", creator=writer)
        assert api_key.role == "write"


def test_an_expired_key_answers_401_like_a_revoked_one(app, client, anon_client, monkeypatch):
    key = client.post(
        "/v0/api_keys", json={"name": "brief", "expires_at": iso(utc_in(60))}
    ).get_json()["key"]
    assert anon_client.get("/v0/pipelines", headers=bearer(key)).status_code == 200
    # A minute passes: the key expires, even though this process remembers it.
    later = utc_in(61)
    monkeypatch.setattr("app.auth.service.utcnow", lambda: later)
    response = anon_client.get("/v0/pipelines", headers=bearer(key))
    body = assert_error(response, 401, "AuthenticationFailed")
    assert body["details"]["reason"] == "expired" and "expired_at" in body["details"]
    assert response.headers["WWW-Authenticate"].endswith('error="invalid_token"')
    # It stays listed, with its expiry, until an admin revokes it.
    assert parse(client.get("/v0/api_keys/brief").get_json()["expires_at"]) < later
    assert client.delete("/v0/api_keys/brief").status_code == 204


# --- storage and the hot path -----------------------------------------------------------------


@sqlite_only
def test_the_database_holds_no_plaintext_key(app, client, anon_client, tmp_path: Path):
    created = client.post("/v0/api_keys", json={"name": "scan", "role": "write"}).get_json()
    runner = app.test_cli_runner()
    cli_key = runner.invoke(args=["api-keys", "create", "scan-cli"]).stdout.strip()
    keys = [created["key"], cli_key]
    for key in keys:
        assert anon_client.get("/v0/pipelines", headers=bearer(key)).status_code == 200
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # checkpoint nothing away: scan the main file and the WAL as they are
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("test.db*"))
    assert service.hash_key(keys[0]).encode() in stored  # the scan does see the table
    for key in keys:
        secret = key.removeprefix("apikey:")
        assert secret.encode() not in stored
        assert secret[10:30].encode() not in stored


def test_no_row_of_any_table_holds_a_key(app, client):
    """The same check through SQL, so it runs on every engine (PostgreSQL too)."""
    key = client.post("/v0/api_keys", json={"name": "rows", "role": "write"}).get_json()["key"]
    secret = key.removeprefix("apikey:")
    with app.app_context():
        seen_hash = False
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(sa.select(table)):
                text = " ".join(str(value) for value in row)
                assert secret[10:30] not in text, table.name
                seen_hash = seen_hash or service.hash_key(key) in text
        assert seen_hash  # the scan does reach the keys table


def test_keys_are_stored_as_their_sha256(app, client):
    key = client.post("/v0/api_keys", json={"name": "h"}).get_json()["key"]
    with app.app_context():
        stored = db.session.execute(sa.select(ApiKey).where(ApiKey.name == "h")).scalar_one()
        assert stored.key_hash == service.hash_key(key) and len(stored.key_hash) == 64
        assert stored.prefix == key[: service.DISPLAY_PREFIX_LENGTH]


def test_keys_carry_256_random_bits():
    keys = {service.generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(KEY_RE.match(k) for k in keys)  # 43 base64url characters = 258 bits >= 256


def _statements(app):
    """Record the SQL statements that touch api_keys."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        if "api_keys" in statement:
            seen.append(statement.split()[0].upper())

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
    return seen


def test_authenticating_costs_one_lookup_and_writes_last_used_once_a_minute(app, client):
    seen = _statements(app)
    client.get("/v0/pipelines")
    assert seen == ["SELECT", "UPDATE"]  # first use: last_used_at recorded
    seen.clear()
    for _ in range(5):
        client.get("/v0/pipelines")
    assert seen == []  # remembered by this process for API_KEY_CACHE_SECONDS
    with app.app_context():
        service.key_cache().clear()  # the cache period ends
    for _ in range(3):
        client.get("/v0/pipelines")
    assert seen == ["SELECT"]  # one indexed lookup, no write within the minute
    last_used = client.get("/v0/api_keys").get_json()[0]["last_used_at"]
    assert last_used is not None


def test_last_used_is_written_again_after_a_minute(app, client):
    client.get("/v0/pipelines")
    with app.app_context():
        key = db.session.execute(sa.select(ApiKey)).scalars().first()
        old = key.last_used_at - dt.timedelta(minutes=2)
        db.session.execute(sa.update(ApiKey).values(last_used_at=old))
        db.session.commit()
        service.key_cache().clear()  # the cache period ends
    client.get("/v0/pipelines")
    with app.app_context():
        newer = db.session.execute(sa.select(ApiKey.last_used_at)).scalars().first()
    assert newer > old + dt.timedelta(minutes=1)


def test_a_busy_database_does_not_fail_the_request_over_last_used(app, client, monkeypatch):
    from sqlalchemy.exc import OperationalError

    real_execute = db.session.execute

    def locked_update(statement, *args, **kwargs):
        if isinstance(statement, sa.Update):
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        return real_execute(statement, *args, **kwargs)

    monkeypatch.setattr(db.session, "execute", locked_update)
    assert client.get("/v0/pipelines").status_code == 200


# --- command line ----------------------------------------------------------------------------


def test_cli_create_prints_the_key_alone(app, anon_client):
    result = app.test_cli_runner().invoke(
        args=["api-keys", "create", "ops", "--role", "write", "--tenant", "acme"]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert KEY_RE.match(key) and result.stdout == key + "\n"
    assert "cannot be shown again" in result.stderr
    response = anon_client.post("/v0/pipelines", json={"name": "p"}, headers=bearer(key))
    assert response.status_code == 201
    assert anon_client.get("/v0/pipelines/p", headers=bearer(key)).get_json()["name"] == "p"
    listed = json.loads(
        app.test_cli_runner().invoke(args=["api-keys", "list", "--json", "--tenant", "acme"]).stdout
    )
    assert [(k["name"], k["role"]) for k in listed] == [("ops", "write")]


def test_cli_create_defaults_to_read_and_tenant_default(app):
    runner = app.test_cli_runner()
    runner.invoke(args=["api-keys", "create", "viewer"])
    listed = json.loads(runner.invoke(args=["api-keys", "list", "--json"]).stdout)
    assert [(k["name"], k["role"], k["tenant"]) for k in listed] == [("viewer", "read", "default")]
    assert listed[0]["expires_at"] is None


def test_cli_creates_an_admin_key(app, anon_client):
    result = app.test_cli_runner().invoke(args=["api-keys", "create", "root", "--role", "admin"])
    assert result.exit_code == 0, result.output
    headers = bearer(result.stdout.strip())
    response = anon_client.post(
        "/v0/api_keys", json={"name": "ops", "role": "admin"}, headers=headers
    )
    assert response.status_code == 201


def test_cli_creates_expiring_keys(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["api-keys", "create", "soon", "--expires-in", "3600"])
    assert result.exit_code == 0, result.output
    assert "expiring at" in result.stderr
    when = "2099-01-02T03:04:05+00:00"
    result = runner.invoke(args=["api-keys", "create", "later", "--expires-at", when])
    assert result.exit_code == 0, result.output
    listed = {
        k["name"]: k for k in json.loads(runner.invoke(args=["api-keys", "list", "--json"]).stdout)
    }
    soon = parse(listed["soon"]["expires_at"])
    assert utc_in(3590) < soon < utc_in(3610)
    assert parse(listed["later"]["expires_at"]) == parse(when)
    table = runner.invoke(args=["api-keys", "list"]).stdout
    assert table.splitlines()[0].split()[-1] == "EXPIRES" and "2099-01-02T03:04:05" in table


@pytest.mark.parametrize(
    "args",
    [
        ["--expires-in", "60", "--expires-at", "2099-01-01T00:00:00Z"],
        ["--expires-at", "2099-01-01T00:00:00"],  # no time zone
        ["--expires-at", "2001-01-01T00:00:00Z"],  # in the past
    ],
)
def test_cli_refuses_a_bad_expiry(app, args):
    result = app.test_cli_runner().invoke(args=["api-keys", "create", "x", *args])
    assert result.exit_code == 1 and "(InvalidRequest)" in result.stderr
    assert result.stdout == ""


def test_cli_list_shows_no_secret(app):
    runner = app.test_cli_runner()
    key = runner.invoke(args=["api-keys", "create", "k1"]).stdout.strip()
    table = runner.invoke(args=["api-keys", "list"]).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "ROLE", "PREFIX"]
    assert "k1" in table and key not in table and key[:13] in table
    listed = runner.invoke(args=["api-keys", "list", "--json"]).stdout
    assert key not in listed and json.loads(listed)[0]["prefix"] == key[:13]


def test_cli_list_is_per_tenant(app):
    runner = app.test_cli_runner()
    runner.invoke(args=["api-keys", "create", "a-key", "--tenant", "a"])
    assert json.loads(runner.invoke(args=["api-keys", "list", "--json"]).stdout) == []
    listed = json.loads(runner.invoke(args=["api-keys", "list", "--json", "--tenant", "a"]).stdout)
    assert [k["name"] for k in listed] == ["a-key"]


def test_cli_revoke(app, anon_client):
    runner = app.test_cli_runner()
    key = runner.invoke(args=["api-keys", "create", "tmp"]).stdout.strip()
    result = runner.invoke(args=["api-keys", "revoke", "tmp"])
    assert result.exit_code == 0 and "Revoked" in result.stdout
    assert anon_client.get("/v0/pipelines", headers=bearer(key)).status_code == 401


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["api-keys", "revoke", "nope"], "Error: Unknown API key name 'nope' (UnknownApiKey)"),
        (["api-keys", "create", "bad name"], "(InvalidRequest)"),
        (["api-keys", "create", "x", "--tenant", "a b"], "(InvalidRequest)"),
    ],
)
def test_cli_errors_go_to_stderr_with_exit_status_1(app, args, error):
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 1
    assert error in result.stderr and result.stdout == ""


def test_cli_create_refuses_a_duplicate(app):
    runner = app.test_cli_runner()
    runner.invoke(args=["api-keys", "create", "twice"])
    result = runner.invoke(args=["api-keys", "create", "twice"])
    assert result.exit_code == 1 and "(DuplicateName)" in result.stderr
    assert result.stdout == ""


def test_api_keys_come_in_pages_linked_by_the_link_header(app, make_key):
    """Listed by name, `limit` per page; the Link header leads to the next page."""
    admin = make_key("paged", "admin", name="a-admin")
    for n in range(5):
        make_key("paged", "read", name=f"k{n}")
    client = app.test_client()
    seen: list[str] = []
    url = "/v0/api_keys?limit=2"
    while url:
        r = client.get(url, headers=admin)
        assert r.status_code == 200, r.get_json()
        seen += [k["name"] for k in r.get_json()]
        link = r.headers.get("Link")
        url = link[link.index("<") + 1 : link.index(">")] if link else ""
    assert seen == ["a-admin", "k0", "k1", "k2", "k3", "k4"]
