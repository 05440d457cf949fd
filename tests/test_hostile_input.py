"""Hostile input: bodies, names and URLs that once crashed, were stored cut short or got through.

Each answers a 4xx with the error body, stores nothing and leaves the view's
log end where it was. Chunked bodies and long request lines are also sent over
real HTTP (a werkzeug server in a thread, and gunicorn with the project's
settings), since the test client neither chunks nor limits request lines. A
generated corpus (hypothesis) checks the same properties for whatever it makes
of JSON-ish bytes, name fields and ``--tenant``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import jwt
import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.serving import make_server

from app import create_app
from app.auth import service as auth_service
from app.extensions import db
from app.pipelines.models import NAME_PATTERN, Pipeline, View, is_valid_name
from app.strict_json import JsonRefused
from app.view_data import store
from app.web import MAX_URL_BYTES
from tests import faults
from tests.conftest import assert_error

CHANGES = "/v0/pipelines/orders/views/totals/changes"
NDJSON = "application/x-ndjson"
ISSUER = "https://idp.example.test"
AUDIENCE = "pipeline-manager"
HS_SECRET = "a-shared-secret-of-at-least-32-bytes!!"
# The body limit the chunked tests set; their bodies go twice over it.
SMALL_LIMIT = 4096
BAD_NAMES = ["orders\n", "orders\r\n", "\norders", "or ders", "", "a" * 101, "ördérs", "o\x00"]

PROPERTY = settings(
    max_examples=int(os.environ.get("PROPERTY_MAX_EXAMPLES", "120")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """JWT on (HS256) besides API keys, for the tenant-claim test."""
    return {
        **app_config,
        "JWT_HS256_SECRET": HS_SECRET,
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
    }


# --- helpers --------------------------------------------------------------------------------


def view_state(app: Flask) -> tuple[int, Counter]:
    """orders/totals as (log end, multiset of canonical records)."""
    with app.app_context():
        view_id = db.session.execute(
            sa.select(View.id)
            .join(Pipeline, View.pipeline_id == Pipeline.id)
            .where(Pipeline.name == "orders", View.name == "totals")
        ).scalar_one()
        state = (
            store.log_end(view_id),
            Counter({store.canonical(r): w for r, w in store.contents(view_id)}),
        )
        db.session.remove()
        return state


def push(client, body: str | bytes, content_type: str | None = "application/json", **kwargs):
    """POST a raw body to orders/totals' changes."""
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(CHANGES, data=body, headers=headers, **kwargs)


def refused(app: Flask, send: Callable[[], Any], status: int, error_code: str) -> dict:
    """Send; check the error answer and that orders/totals did not change. Return the body."""
    before = view_state(app)
    body = assert_error(send(), status, error_code)
    assert view_state(app) == before
    return body


def bad_change(app: Flask, client, body: str, content_type: str = "application/json") -> dict:
    """Push a batch that must be refused with 400; return its details."""
    return refused(app, lambda: push(client, body, content_type), 400, "InvalidRequest")["details"]


def chunks(body: bytes, size: int = 1000) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding."""
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def send_raw(port: int, request: bytes) -> tuple[int, dict]:
    """Send raw bytes on a new connection; return the answer's status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.getheader("Content-Type") == "application/json"
        return answer.status, json.loads(answer.read())


def chunked_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """POST ``body`` chunked (no Content-Length) over a real connection."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return send_raw(port, head.encode() + b"\r\n" + chunks(body))


def assert_error_body(body: dict) -> None:
    """The contract's error body: exactly message, error_code and details."""
    assert set(body) == {"message", "error_code", "details"}, body
    assert isinstance(body["message"], str) and isinstance(body["details"], dict)


# --- 1. chunked bodies over the limit -------------------------------------------------------

# Each route that reads a body, with a body that is still valid once cut at the limit.
PADDED_BODIES = {
    ("post", "/v0/pipelines"): {"name": "cut"},
    ("patch", "/v0/pipelines/orders"): {"description": "cut"},
    ("post", "/v0/pipelines/orders/views"): {"name": "cut"},
    ("post", "/v0/pipelines/orders/views/totals/connectors"): {
        "name": "cut",
        "transport": {"name": "file", "config": {"path": "out/cut.jsonl"}},
    },
    ("post", "/v0/api_keys"): {"name": "cut"},
    ("post", CHANGES): [{"insert": {"id": "cut"}}],
    ("post", "/v0/pipelines/orders/views/totals/connectors/sink1/start"): {"skip": True},
    ("post", "/v0/notifications"): {
        "url": "http://hooks.example/cut",
        "events": ["reset.completed"],
        "name": "cut",
    },
}


def _openapi_path(path: str) -> str:
    return (
        path.replace("/orders", "/{pipeline_name}")
        .replace("/totals", "/{view_name}")
        .replace("/sink1", "/{connector_name}")
    )


def test_every_route_that_reads_a_body_is_walked(anon_client):
    document = anon_client.get("/openapi.json").get_json()
    with_body = {
        (method, path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "requestBody" in operation
    }
    assert with_body == {(m, _openapi_path(p)) for m, p in PADDED_BODIES}


def _stored_anything(app: Flask) -> bool:
    """Whether any of the padded bodies left a trace."""
    with app.app_context():
        found = db.session.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM pipelines WHERE name = 'cut' OR description = 'cut')"
                " + (SELECT count(*) FROM views WHERE name = 'cut')"
                " + (SELECT count(*) FROM connectors WHERE name = 'cut')"
                " + (SELECT count(*) FROM api_keys WHERE name = 'cut')"
                " + (SELECT count(*) FROM notification_endpoints WHERE name = 'cut')"
            )
        ).scalar_one()
        db.session.remove()
    return bool(found)


@pytest.mark.parametrize(("method", "path"), sorted(PADDED_BODIES))
def test_a_chunked_body_over_the_limit_is_413_on_every_body_route(
    running_pipeline, client, app, method, path
):
    app.config["MAX_CONTENT_LENGTH"] = SMALL_LIMIT
    body = json.dumps(PADDED_BODIES[method, path]).encode() + b" " * (2 * SMALL_LIMIT)

    def send():
        # No Content-Length: the way a WSGI server hands over a chunked body.
        return client.open(
            path,
            method=method.upper(),
            data=body,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    details = refused(app, send, 413, "PayloadTooLarge")["details"]
    assert details == {"max_content_length": SMALL_LIMIT}
    assert not _stored_anything(app)


def test_a_chunked_body_at_the_limit_is_read_whole(running_pipeline, client, app):
    app.config["MAX_CONTENT_LENGTH"] = SMALL_LIMIT
    body = b'[{"insert": {"id": 1}}]'
    body += b" " * (SMALL_LIMIT - len(body))
    r = client.post(
        CHANGES,
        data=body,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 200, r.get_json()
    assert view_state(app)[0] == 1


@pytest.fixture
def werkzeug_port(app: Flask) -> Iterator[int]:
    """The app served by a real werkzeug server (chunked bodies and all) in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)


def test_a_chunked_body_over_the_limit_is_413_over_real_http(
    running_pipeline, app, auth_headers, werkzeug_port
):
    app.config["MAX_CONTENT_LENGTH"] = SMALL_LIMIT
    headers = {**auth_headers, "Content-Type": "application/json"}
    before = view_state(app)
    for path in (CHANGES, "/v0/pipelines"):
        body = json.dumps(PADDED_BODIES["post", path]).encode() + b" " * (2 * SMALL_LIMIT)
        status, answer = chunked_post(werkzeug_port, path, body, headers)
        assert (status, answer["error_code"]) == (413, "PayloadTooLarge"), answer
        assert_error_body(answer)
    assert view_state(app) == before
    assert not _stored_anything(app)
    # Under the limit, the same chunked way in works.
    status, answer = chunked_post(werkzeug_port, CHANGES, b'[{"insert": {"id": 1}}]', headers)
    assert (status, answer["log_end"]) == (200, before[0] + 1), answer


# --- 2. what used to answer 500 -------------------------------------------------------------

DEEP = "[" * 100_000
HUGE_INT = "1" * 5000


@pytest.mark.parametrize(
    ("body", "index", "problem"),
    [
        (DEEP, None, "nested deeper"),
        ('[{"insert": {"x": ' + "[" * 150 + "]" * 150 + "}}]", 0, "nested deeper"),
        ('[{"insert": {"id": 1}}, {"insert": {"x": ' + HUGE_INT + "}}]", 1, "digits"),
        ('[{"insert": {"id": 1}}, {"insert": {"x": "a\\ud800"}}]', 1, "lone surrogate"),
        ('[{"insert": {"id": 1}}, {"insert": {"\\udfff": 1}}]', 1, "lone surrogate"),
    ],
    ids=["brackets", "deep-record", "huge-int", "surrogate-value", "surrogate-key"],
)
def test_what_crashed_is_400_naming_the_problem(
    running_pipeline, client, app, body, index, problem
):
    details = bad_change(app, client, body)
    if index is None:
        assert problem in details["body"][0]
    else:
        assert details["index"] == index
        assert problem in details["problem"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (DEEP, "nested deeper"),
        ('{"insert": {"x": ' + HUGE_INT + "}}", "digits"),
        ('{"insert": {"x": "\\ud800"}}', "lone surrogate"),
    ],
)
def test_what_crashed_in_ndjson_names_the_line(running_pipeline, client, app, line, problem):
    details = bad_change(app, client, '{"insert": {"id": 1}}\n\n' + line + "\n", NDJSON)
    assert (details["index"], details["line"]) == (1, 3)
    assert problem in details["problem"]


@pytest.mark.parametrize(
    "body",
    [DEEP, '{"name": "p", "description": ' + HUGE_INT + "}", '{"name": "p\\ud800"}'],
    ids=["brackets", "huge-int", "surrogate"],
)
def test_what_crashed_on_json_routes_is_400(client, body):
    r = client.post("/v0/pipelines", data=body, content_type="application/json")
    assert "json" in assert_error(r, 400, "InvalidRequest")["details"]
    assert client.get("/v0/pipelines").get_json() == []


def test_a_surrogate_pair_is_one_character(running_pipeline, client, app):
    assert push(client, '[{"insert": {"x": "\\ud83d\\ude00"}}]').status_code == 200
    assert view_state(app)[1] == Counter({'{"x":"\U0001f600"}': 1})


# --- 3. NaN, infinities -----------------------------------------------------------------------


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400"])
@pytest.mark.parametrize("content_type", ["application/json", NDJSON])
def test_numbers_json_cannot_hold_are_refused_naming_the_element(
    running_pipeline, client, app, token, content_type
):
    elements = ['{"insert": {"id": 1}}', '{"insert": {"x": [1, {"y": ' + token + "}]}}"]
    body = "[" + ",".join(elements) + "]" if content_type != NDJSON else "\n".join(elements)
    details = bad_change(app, client, body, content_type)
    assert details["index"] == 1
    assert "1e999" in details["problem"]
    if content_type == NDJSON:
        assert details["line"] == 2


def test_json_routes_refuse_nan_too(client):
    r = client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        data='{"name": "s", "transport": {"name": "http", "config": {"timeout": NaN}}}',
        content_type="application/json",
    )
    assert_error(r, 400, "InvalidRequest")


# --- 4. equal values are one record -----------------------------------------------------------


@pytest.mark.parametrize(
    ("inserted", "deleted"),
    [
        ("10", "10.0"),
        ("10.0", "1e1"),
        ("10", "1E+1"),
        ("0", "-0.0"),
        ("0", "-0"),
        ("1.5", "15e-1"),
        ("10000000000000000", "1e16"),
        ("[1, 2.0]", "[1.0, 2]"),
        ('{"b": 3}', '{"b": 3.0}'),
    ],
)
def test_equal_numbers_are_one_record(running_pipeline, client, app, inserted, deleted):
    assert push(client, '[{"insert": {"total": ' + inserted + "}}]").status_code == 200
    r = push(client, '[{"delete": {"total": ' + deleted + "}}]")
    assert r.status_code == 200, r.get_json()
    assert view_state(app) == (2, Counter())


@pytest.mark.parametrize(("inserted", "deleted"), [("1", "true"), ("0", "false"), ("1", '"1"')])
def test_values_of_other_types_are_other_records(running_pipeline, client, app, inserted, deleted):
    assert push(client, '[{"insert": {"total": ' + inserted + "}}]").status_code == 200
    assert (
        "does not hold"
        in bad_change(app, client, '[{"delete": {"total": ' + deleted + "}}]")["problem"]
    )


@pytest.mark.parametrize(
    ("record", "text"),
    [
        ({"a": 10.0}, '{"a":10}'),
        ({"a": -0.0}, '{"a":0}'),
        ({"a": 1.5}, '{"a":1.5}'),
        ({"a": 1e16}, '{"a":10000000000000000}'),
        ({"a": 1e20}, '{"a":100000000000000000000}'),
        ({"a": 1e21}, '{"a":1e+21}'),
        ({"a": -1e300}, '{"a":-1e+300}'),
        ({"a": 2**70}, '{"a":1180591620717411303424}'),
        ({"a": True, "b": None}, '{"a":true,"b":null}'),
        ({"b": [1.0, {"c": 2.0}], "a": "\u2028"}, '{"a":"\u2028","b":[1,{"c":2}]}'),
    ],
)
def test_the_canonical_form_of_numbers(record, text):
    assert store.canonical(record) == text


@pytest.mark.parametrize(
    "record",
    [{"a": float("nan")}, {"a": float("inf")}, {"a": "\ud800"}, {"\ud800": 1}, {1: 2}],
)
def test_the_canonical_form_refuses_what_json_cannot_hold(record):
    with pytest.raises(JsonRefused):
        store.canonical(record)


# --- 5. newline-delimited JSON splits on \n alone ---------------------------------------------


def test_ndjson_splits_on_newlines_only(running_pipeline, client, app):
    separators = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
    lines = [json.dumps({"insert": {"s": f"a{sep}b"}}, ensure_ascii=False) for sep in separators]
    r = push(client, ("\r\n".join(lines) + "\n").encode(), NDJSON)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["records"] == len(separators)
    stored = {json.loads(text)["s"] for text in view_state(app)[1]}
    assert stored == {f"a{sep}b" for sep in separators}


def test_ndjson_line_numbers_count_newlines_only(running_pipeline, client, app):
    body = '{"insert": {"s": "a\u2028b"}}\r\n{"insert": {"s": "\x85"}}\n{"insert": '
    details = bad_change(app, client, body, NDJSON)
    assert (details["index"], details["line"]) == (2, 3)


def test_a_line_of_unicode_blanks_is_not_a_blank_line(running_pipeline, client, app):
    details = bad_change(app, client, '{"insert": {"id": 1}}\n\u2028\n', NDJSON)
    assert (details["index"], details["line"]) == (1, 2)


# --- 6. duplicate keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "element",
    [
        '{"insert": {"id": 1}, "insert": {"id": 2}}',
        '{"insert": {"id": 1, "id": 2}}',
        '{"insert": {"id": 1, "x": {"y": 1, "z": [{"k": 1, "k": 1}]}}}',
    ],
    ids=["change", "record", "deep"],
)
@pytest.mark.parametrize("content_type", ["application/json", NDJSON])
def test_duplicate_keys_are_refused_at_any_depth(
    running_pipeline, client, app, element, content_type
):
    elements = ['{"insert": {"id": 0}}', element]
    body = "[" + ",".join(elements) + "]" if content_type != NDJSON else "\n".join(elements)
    details = bad_change(app, client, body, content_type)
    assert details["index"] == 1
    assert "duplicate key" in details["problem"]


def test_json_routes_refuse_duplicate_keys(client):
    r = client.post(
        "/v0/pipelines", data='{"name": "a", "name": "b"}', content_type="application/json"
    )
    assert "duplicate key" in assert_error(r, 400, "InvalidRequest")["message"]
    assert client.get("/v0/pipelines").get_json() == []


# --- 7. content types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json-seq",
    ],
)
def test_changes_in_another_format_are_415(running_pipeline, client, app, content_type):
    body = refused(
        app,
        lambda: push(client, '[{"insert": {"id": 1}}]', content_type),
        415,
        "UnsupportedMediaType",
    )
    assert "application/json" in body["details"]["accepted"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", '[{"insert": {"id": 1}}]'),
        ("application/json; charset=utf-8", '[{"insert": {"id": 1}}]'),
        (NDJSON, '{"insert": {"id": 1}}\n'),
        ("application/jsonl", '{"insert": {"id": 1}}\n'),
    ],
)
def test_changes_as_json_or_ndjson_are_taken(running_pipeline, client, content_type, body):
    r = push(client, body, content_type)
    assert (r.status_code, r.get_json()["records"]) == (200, 1)


def test_415_is_documented(anon_client):
    document = anon_client.get("/openapi.json").get_json()
    responses = document["paths"][_openapi_path(CHANGES)]["post"]["responses"]
    assert "UnsupportedMediaType" in responses["415"]["description"]


# --- 8. names are whole-value matches ---------------------------------------------------------


def _name_bodies(name: str) -> list[tuple[str, str, dict]]:
    """Every API body that carries a name, with ``name`` in it."""
    return [
        ("post", "/v0/pipelines", {"name": name}),
        ("post", "/v0/pipelines", {"name": "fresh", "views": [name]}),
        ("patch", "/v0/pipelines/orders", {"views": ["totals", name]}),
        ("post", "/v0/pipelines/orders/views", {"name": name}),
        (
            "post",
            "/v0/pipelines/orders/views/totals/connectors",
            {"name": name, "transport": {"name": "file", "config": {"path": "out/n.jsonl"}}},
        ),
        ("post", "/v0/api_keys", {"name": name}),
        (
            "post",
            "/v0/notifications",
            {"url": "http://hooks.example/n", "events": ["reset.completed"], "name": name},
        ),
    ]


def test_every_name_field_of_the_api_is_walked(anon_client):
    """The walk below covers every body field the document gives NAME_PATTERN."""
    document = anon_client.get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    named = set()
    for schema_name, schema in schemas.items():
        for field, spec in schema.get("properties", {}).items():
            if NAME_PATTERN in (spec.get("pattern"), spec.get("items", {}).get("pattern")):
                named.add((schema_name, field))
    assert named == {
        ("PipelineCreate", "name"),
        ("PipelineCreate", "views"),
        ("PipelineUpdate", "views"),
        ("ViewCreate", "name"),
        ("ConnectorCreate", "name"),
        ("ApiKeyCreate", "name"),
        ("NotificationCreate", "name"),
    }
    assert len(_name_bodies("x")) == len(named)


NAMED_TABLES = ("pipelines", "views", "connectors", "api_keys", "notification_endpoints")


def _everything(app: Flask) -> tuple[list[str], ...]:
    """Every name stored anywhere: of pipelines, views, connectors, API keys and endpoints."""
    with app.app_context():
        found = tuple(
            sorted(
                db.session.execute(sa.select(sa.column("name")).select_from(sa.table(t))).scalars()
            )
            for t in NAMED_TABLES
        )
        db.session.remove()
    return found


@pytest.mark.parametrize("name", BAD_NAMES)
def test_no_name_field_takes_a_bad_name(api, client, app, name):
    api.create_pipeline()
    before = _everything(app)
    for method, path, body in _name_bodies(name):
        r = getattr(client, method)(path, json=body)
        details = assert_error(r, 400, "InvalidRequest")["details"]
        assert set(details) & {"name", "views"}, (path, details)
    assert _everything(app) == before


@pytest.fixture
def cli(app: Flask):
    """Run ``flask ARGS...`` against the test app."""
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=list(args))


def assert_cli_invalid(result, field: str) -> None:
    """The command failed with InvalidRequest naming ``field``, and no traceback."""
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    first, *rest = result.stderr.splitlines()
    assert first.endswith("(InvalidRequest)"), result.stderr
    assert field in json.loads(rest[-1])


def test_every_tenant_option_of_the_cli_refuses_a_bad_tenant(app, cli, tmp_path):
    changes = tmp_path / "changes.json"
    changes.write_text("[]")
    walked = []
    for group in app.cli.commands.values():
        for name, command in getattr(group, "commands", {}).items():
            if not any(p.name == "tenant" for p in command.params):
                continue
            # The arguments, with any value: --tenant comes first, so it is checked first.
            args = [
                str(changes) if p.name == "file" else "x"
                for p in command.params
                if isinstance(p, click.Argument)
            ]
            for bad in ("default\n", "de fault", ""):
                assert_cli_invalid(cli(group.name, name, "--tenant", bad, *args), "tenant")
            walked.append(f"{group.name} {name}")
    assert {"pipelines create", "api-keys create", "views push", "resets issue"} <= set(walked)


@pytest.mark.parametrize("name", BAD_NAMES[:3])
def test_no_name_argument_of_the_cli_takes_a_bad_name(app, cli, name):
    assert cli("pipelines", "create", "orders", "--view", "totals").exit_code == 0
    before = _everything(app)
    assert_cli_invalid(cli("pipelines", "create", name), "name")
    assert_cli_invalid(cli("pipelines", "create", "fresh", "--view", name), "views")
    assert_cli_invalid(
        cli("connectors", "add", "orders", "totals", name, "--transport", "file", "--path", "o"),
        "name",
    )
    assert_cli_invalid(cli("api-keys", "create", name), "name")
    assert _everything(app) == before


def _token(tenant: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60, "tenant": tenant, "role": "write"}
    return jwt.encode(claims, HS_SECRET, algorithm="HS256")


@pytest.mark.parametrize("tenant", ["B\n", "B\r\n", "\nB", "B ", ""])
def test_a_jwt_tenant_claim_must_be_a_whole_name(anon_client, tenant):
    ok = anon_client.get("/v0/pipelines", headers={"Authorization": f"Bearer {_token('B')}"})
    assert ok.status_code == 200
    r = anon_client.get("/v0/pipelines", headers={"Authorization": f"Bearer {_token(tenant)}"})
    assert assert_error(r, 401, "AuthenticationFailed")["details"]["reason"] == "invalid_claim"


# --- 9. long URLs -----------------------------------------------------------------------------


def _url(length: int) -> str:
    """A URL of exactly ``length`` bytes that answers 200 when not too long."""
    return "/healthz?pad=" + "a" * (length - len("/healthz?pad="))


def test_a_url_over_the_bound_is_414_with_the_error_body(anon_client):
    assert anon_client.get(_url(MAX_URL_BYTES)).status_code == 200
    details = assert_error(anon_client.get(_url(MAX_URL_BYTES + 1)), 414, "UriTooLong")["details"]
    assert details == {"max_url_bytes": MAX_URL_BYTES, "url_bytes": MAX_URL_BYTES + 1}


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """gunicorn with the project's settings; yields its port and a write key's headers."""
    settings = {"BACKGROUND_WORKER": "false", "MAX_CONTENT_LENGTH": SMALL_LIMIT}
    with faults.served(tmp_path, settings) as (base, env):
        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": env["PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI"],
                "SECRET_KEY": "x",
            }
        )
        with app.app_context():
            _, key = auth_service.create_key("default", "hostile", "write")
            db.session.remove()
            db.engine.dispose()
        yield int(base.rsplit(":", 1)[1]), {"Authorization": f"Bearer {key}"}


def test_gunicorn_answers_every_long_line_and_chunked_body_with_the_error_body(gunicorn):
    port, auth = gunicorn
    base = f"http://127.0.0.1:{port}"

    def get(url: str) -> tuple[int, dict]:
        return send_raw(port, f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())

    assert get(_url(MAX_URL_BYTES))[0] == 200
    status, body = get(_url(MAX_URL_BYTES + 1))
    assert (status, body["error_code"], body["details"]["max_url_bytes"]) == (
        414,
        "UriTooLong",
        MAX_URL_BYTES,
    )
    # Past gunicorn's own ceiling (8190 bytes of request line) it answers itself.
    for length in (8200, 20_000, 100_000):
        status, body = get(_url(length))
        assert (status, body["error_code"]) == (414, "UriTooLong")
        assert_error_body(body)
    status, body = send_raw(port, b"NOT AN HTTP REQUEST\r\n\r\n")
    assert (status, body["error_code"]) == (400, "InvalidRequest")
    assert_error_body(body)

    # A chunked body over MAX_CONTENT_LENGTH: 413, nothing stored.
    session = requests.Session()
    session.headers.update(auth)
    r = session.post(f"{base}/v0/pipelines", json={"name": "orders", "views": ["totals"]})
    assert r.status_code == 201, r.text
    assert session.post(f"{base}/v0/pipelines/orders/start").status_code == 200
    padded = b'[{"insert": {"id": 1}}]' + b" " * (2 * SMALL_LIMIT)
    headers = {**auth, "Content-Type": "application/json"}
    status, body = chunked_post(port, CHANGES, padded, headers)
    assert (status, body["error_code"]) == (413, "PayloadTooLarge")
    r = session.post(f"{base}{CHANGES}", json=[])
    assert r.json()["log_end"] == 0


# --- the generated corpus ---------------------------------------------------------------------

NUMBER_TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-0.0", "10.0", "1e1", "-0", HUGE_INT]
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
TEXT = st.text(
    st.one_of(st.characters(), SURROGATES, st.sampled_from('\n\r\u2028\x85"\\')), max_size=8
)


def _scalar_text() -> st.SearchStrategy[str]:
    """A JSON-ish scalar, rendered: real JSON or the tokens Python's json is lenient about."""
    return st.one_of(
        st.integers().map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["true", "false", "null", *NUMBER_TOKENS]),
        st.tuples(TEXT, st.booleans()).map(lambda t: json.dumps(t[0], ensure_ascii=t[1])),
    )


def _render_object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"


VALUES = st.recursive(
    _scalar_text(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        # Keys may repeat: objects are rendered from pairs, not dicts.
        st.lists(
            st.tuples(st.sampled_from(['"id"', '"x"', '"\\ud800"', '"a b"']), inner), max_size=4
        ).map(_render_object),
    ),
    max_leaves=12,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
GOOD_CHANGE = st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=4).map(
    lambda record: json.dumps({"insert": record}, allow_nan=True)
)
HOSTILE_CHANGE = st.one_of(
    st.tuples(st.sampled_from(['"insert"', '"insert"', '"delete"', '"upsert"']), VALUES).map(
        lambda t: _render_object([t])
    ),
    VALUES,
)
# one_of picks a branch uniformly: well-formed changes half of the time.
CHANGE = st.one_of(GOOD_CHANGE, HOSTILE_CHANGE)
SEPARATOR = st.sampled_from(["\n", "\r\n", "\n\n", "\u2028", " \n"])


@st.composite
def bodies(draw) -> tuple[bytes, str | None]:
    """A body for /changes and the content type it is sent with."""
    # Half of the bodies are well-formed, to walk the storing path too.
    clean = draw(st.booleans())
    types = ["application/json", NDJSON, "application/jsonl"]
    content_type = draw(st.sampled_from(types if clean else [*types, "text/plain", None]))
    changes = draw(st.lists(GOOD_CHANGE if clean else CHANGE, max_size=5))
    if content_type in (NDJSON, "application/jsonl"):
        text = "".join(change + draw(SEPARATOR) for change in changes)
    else:
        text = "[" + ",".join(changes) + "]"
    data = text.encode("utf-8", "surrogatepass")
    mutation = "none" if clean else draw(st.sampled_from(["none", "cut", "insert", "bytes"]))
    if mutation == "cut" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    elif mutation == "bytes":
        data = draw(st.binary(max_size=64))
    return data, content_type


@PROPERTY
@given(body=bodies())
def test_generated_bodies_never_crash_and_a_refusal_stores_nothing(
    running_pipeline, client, app, body
):
    data, content_type = body
    before = view_state(app)
    r = push(client, data, content_type)
    event(f"status {r.status_code}")
    assert r.status_code < 500, r.get_data(as_text=True)
    after = view_state(app)
    if r.status_code >= 400:
        assert_error_body(r.get_json())
        assert after == before
    else:
        assert r.status_code == 200
        assert after[0] == before[0] + r.get_json()["records"]


@PROPERTY
@given(body=bodies())
def test_generated_bodies_on_a_json_route_never_crash(client, app, body):
    data, _content_type = body
    before = _everything(app)
    r = client.post("/v0/pipelines", data=data, content_type="application/json")
    assert r.status_code < 500, r.get_data(as_text=True)
    assert_error_body(r.get_json())
    assert _everything(app) == before


NAMES = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9_-]{1,12}\Z"),
    st.from_regex(r"\A[A-Za-z0-9_-]{1,12}\Z").map(lambda s: s + "\n"),
    st.text(st.one_of(st.characters(), SURROGATES), max_size=12),
)


@PROPERTY
@given(name=NAMES, index=st.integers(0, 5))
def test_generated_names_are_taken_only_when_whole_names(api, client, app, name, index):
    if "orders" not in _everything(app)[0]:
        api.create_pipeline()
    method, path, body = _name_bodies(name)[index]
    before = _everything(app)
    text = json.dumps(body)  # ensure_ascii: a lone surrogate travels as "\ud800"
    r = client.open(path, method=method.upper(), data=text, content_type="application/json")
    event(f"status {r.status_code}")
    assert r.status_code < 500, r.get_data(as_text=True)
    if r.status_code >= 400:
        assert_error_body(r.get_json())
        assert _everything(app) == before
    if r.status_code < 400:
        assert is_valid_name(name), (name, r.status_code)
    elif r.status_code == 400 and name != "totals":
        # A whole name is refused for nothing but what is wrong with it.
        assert not is_valid_name(name), (name, r.get_json())


@settings(PROPERTY, max_examples=60)
@given(tenant=NAMES)
def test_generated_tenants_are_taken_only_when_whole_names(cli, tenant):
    result = cli("api-keys", "list", "--tenant", tenant)
    if is_valid_name(tenant):
        assert result.exit_code == 0, (result.stdout, result.stderr)
    else:
        assert_cli_invalid(result, "tenant")
