"""The plain reset_status poll, answered before Flask (app/resets/fast_status.py).

Each request is sent twice: through the app as served (the fast path in
front) and to the Flask app behind it alone. Both answers must be the same:
status, headers, body. A plain poll must be answered without Flask; every
other shape, and every error, must reach Flask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app import create_app
from app.errors import _REQUEST_ID_KEY, _REQUEST_ID_RE
from app.extensions import db
from app.logs import ACCESS_CONTEXT_KEY
from app.metrics import REQUESTS
from app.resets.fast_status import RULE, FastStatus, install, unknown_hooks
from tests.conftest import Api

# Fields computed against the clock at each answer.
CLOCK_FIELDS = {"rate_records_per_second", "eta_seconds"}


@dataclass
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes
    environ: dict[str, Any]
    by_flask: bool = False
    generated_id: bool = False

    def comparable(self) -> tuple[str, list[tuple[str, str]], Any]:
        """What must be equal between the two paths (a generated request id is not)."""
        headers = sorted(
            (name, value)
            for name, value in self.headers
            if not (self.generated_id and name == "X-Request-Id")
        )
        body: Any = self.body
        if self.body and dict(self.headers).get("Content-Type") == "application/json":
            body = json.loads(self.body)
            for name in CLOCK_FIELDS:
                body.pop(name, None)
        return self.status, headers, body


def send(app: Flask, *, fast: bool, path: str, query: str = "", headers=None, **more) -> Answer:
    """One request through the served app (``fast``) or the Flask app behind the fast path."""
    front = app.wsgi_app
    assert isinstance(front, FastStatus)
    environ = EnvironBuilder(
        path=path, query_string=query, headers=headers or {}, **more
    ).get_environ()
    flask_calls = []
    behind = front.wsgi_app

    def counted(environ: dict, start_response: Any) -> Any:
        flask_calls.append(1)
        return behind(environ, start_response)

    seen: dict[str, Any] = {}

    def entry(environ: dict, start_response: Any) -> Any:
        seen.update(environ=environ)  # run_wsgi_app passes on a copy
        return (front if fast else counted)(environ, start_response)

    if fast:
        front.wsgi_app = counted
    try:
        body_iter, status, answer_headers = run_wsgi_app(entry, environ)
    finally:
        front.wsgi_app = behind
    streamed = answer_headers.get("Content-Type", "").startswith("text/event-stream")
    body = b"" if streamed else b"".join(body_iter)
    if hasattr(body_iter, "close"):
        body_iter.close()
    given = (headers or {}).get("X-Request-Id")
    return Answer(
        status,
        list(answer_headers.items()),
        body,
        seen["environ"],
        by_flask=bool(flask_calls),
        generated_id=given is None or not _REQUEST_ID_RE.match(given),
    )


def both(app: Flask, path: str, query: str = "", headers=None, **more) -> tuple[Answer, Answer]:
    """The answer of the served app and of Flask alone to the same request, compared."""
    served = send(app, fast=True, path=path, query=query, headers=headers, **more)
    alone = send(app, fast=False, path=path, query=query, headers=headers, **more)
    assert served.comparable() == alone.comparable()
    return served, alone


STATUS = "/v0/pipelines/orders/reset_status"


@pytest.fixture
def token(running_pipeline: Api) -> str:
    return running_pipeline.reset()


def test_the_factory_installs_the_fast_path(app: Flask) -> None:
    assert isinstance(app.wsgi_app, FastStatus)
    assert unknown_hooks(app) == []


@pytest.mark.parametrize("role", ["read", "write", "admin"])
def test_a_plain_poll_is_answered_without_flask_as_flask_answers_it(
    app: Flask, token: str, make_key, role: str
) -> None:
    headers = make_key("default", role)
    served, _ = both(app, STATUS, f"token={token}", headers)
    assert served.status == "200 OK"
    assert not served.by_flask
    assert json.loads(served.body)["status"] == "inprogress"
    assert dict(served.headers)["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "more",
    [
        {"Accept": "application/json"},
        {"Accept": "*/*"},
        {"Accept": "text/html, */*;q=0.8"},
        {"Origin": "https://elsewhere.example"},  # no CORS configured: nothing to add
        {"User-Agent": "poller/1.0", "Connection": "keep-alive"},
    ],
)
def test_headers_that_change_nothing(app: Flask, token: str, auth_headers, more) -> None:
    served, _ = both(app, STATUS, f"token={token}", {**auth_headers, **more})
    assert served.status == "200 OK" and not served.by_flask


def test_a_sane_request_id_is_echoed_and_a_bad_one_replaced(
    app: Flask, token: str, auth_headers
) -> None:
    served, alone = both(app, STATUS, f"token={token}", {**auth_headers, "X-Request-Id": "ab-1"})
    assert not served.by_flask
    assert dict(served.headers)["X-Request-Id"] == "ab-1" == served.environ[_REQUEST_ID_KEY]
    served, alone = both(app, STATUS, f"token={token}", {**auth_headers, "X-Request-Id": "a b"})
    assert not served.by_flask
    assert len(dict(served.headers)["X-Request-Id"]) == 32
    assert dict(served.headers)["X-Request-Id"] != dict(alone.headers)["X-Request-Id"]


def test_completed_and_paused_resets(app: Flask, running_pipeline: Api, auth_headers, run_resets):
    token = running_pipeline.reset()
    run_resets()
    served, _ = both(app, STATUS, f"token={token}", auth_headers)
    assert json.loads(served.body)["status"] == "complete" and not served.by_flask
    running_pipeline.action("orders", "pause")
    served, _ = both(app, STATUS, f"token={token}", auth_headers)
    assert served.status == "200 OK" and not served.by_flask


def test_each_fast_answer_is_counted_in_the_latency_histogram(
    app: Flask, token: str, auth_headers
) -> None:
    def count() -> float:
        labels = {"route": RULE, "method": "GET", "status": "200"}
        samples = [sample for metric in REQUESTS.collect() for sample in metric.samples]
        return next(
            (s.value for s in samples if s.name.endswith("_count") and s.labels == labels), 0.0
        )

    before = count()
    served = send(app, fast=True, path=STATUS, query=f"token={token}", headers=auth_headers)
    assert not served.by_flask
    assert count() == before + 1


def test_errors_and_other_shapes_go_to_flask(
    app: Flask, running_pipeline: Api, token: str, auth_headers, other_tenant_headers
) -> None:
    key = auth_headers["Authorization"].removeprefix("Bearer ")
    cases: list[tuple[str, str, dict[str, str], dict[str, Any]]] = [
        (STATUS, "token=x" + token, auth_headers, {}),  # a bad signature: 400
        (STATUS, f"token={token[:-3]}", auth_headers, {}),  # 400
        (STATUS, "", auth_headers, {}),  # no token: 400
        (STATUS, f"token={token}&token=x", auth_headers, {}),  # a second value
        (STATUS, f"token={token}&other=1", auth_headers, {}),
        (STATUS, f"token={token.replace('.', '%2E', 1)}", auth_headers, {}),  # an escape
        ("/v0/pipelines/nosuch/reset_status", f"token={token}", auth_headers, {}),  # 404
        (STATUS, f"token={token}", other_tenant_headers, {}),  # another tenant's: 404
        (STATUS + "/", f"token={token}", auth_headers, {}),
        ("/v0/pipelines/or%C3%A9/reset_status", f"token={token}", auth_headers, {}),
        (STATUS, f"token={token}", {}, {}),  # 401
        (STATUS, f"token={token}", {"Authorization": "Bearer apikey:" + "A" * 43}, {}),  # 401
        (STATUS, f"token={token}", {"Authorization": f"bearer {key}"}, {}),  # Flask's 200
        (STATUS, f"token={token}", {"Authorization": f"Bearer  {key}"}, {}),
        (STATUS, f"token={token}", {"Authorization": "Bearer eyJ.x.y"}, {}),  # not a key
        (STATUS, f"token={token}", {**auth_headers, "Cookie": "session=x"}, {}),
        (STATUS, f"token={token}", {**auth_headers, "Accept": "text/event-stream"}, {}),
        (STATUS, f"token={token}", auth_headers, {"method": "HEAD"}),
        (STATUS, f"token={token}", auth_headers, {"method": "POST"}),  # 405
        (STATUS, "token=" + "A" * 8100, auth_headers, {}),  # 414
    ]
    for path, query, headers, more in cases:
        served, _ = both(app, path, query, headers, **more)
        assert served.by_flask, (path, query, headers, more, served.status)


def test_a_stopped_and_a_restarted_pipeline_answer_through_flask(
    app: Flask, running_pipeline: Api, token: str, auth_headers
) -> None:
    running_pipeline.action("orders", "stop")
    served, _ = both(app, STATUS, f"token={token}", auth_headers)
    assert served.status.startswith("503") and served.by_flask
    running_pipeline.action("orders", "start")
    served, _ = both(app, STATUS, f"token={token}", auth_headers)
    assert served.status.startswith("410") and served.by_flask


def test_a_revoked_key_is_refused_by_flask(app: Flask, token: str, make_key, client) -> None:
    headers = make_key("default", "read", name="soon-revoked")
    served, _ = both(app, STATUS, f"token={token}", headers)
    assert served.status == "200 OK" and not served.by_flask
    assert client.delete("/v0/api_keys/soon-revoked").status_code == 204
    served, _ = both(app, STATUS, f"token={token}", headers)
    assert served.status.startswith("401") and served.by_flask


class TestWithCorsConfigured:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        return {**app_config, "CORS_ORIGINS": ["https://docs.example"]}

    def test_flask_cors_answers_every_poll(self, app: Flask, token: str, client) -> None:
        # flask-cors sends its headers with or without an Origin: Flask answers all.
        assert not isinstance(app.wsgi_app, FastStatus)
        answer = client.get(STATUS, query_string={"token": token})
        assert answer.status_code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == "https://docs.example"
        assert "Origin" in answer.headers["Vary"]


class TestWithTrustedHosts:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        return {**app_config, "TRUSTED_HOSTS": ["api.internal", "localhost"]}

    def test_only_a_trusted_host_is_answered_here(self, app: Flask, token: str, auth_headers):
        served, _ = both(
            app, STATUS, f"token={token}", auth_headers, base_url="http://api.internal"
        )
        assert served.status == "200 OK" and not served.by_flask
        served, _ = both(app, STATUS, f"token={token}", auth_headers, base_url="http://evil")
        assert served.status.startswith("400") and served.by_flask


class TestWithJsonLogs:
    @pytest.fixture
    def app_config(self, app_config: dict[str, Any]) -> dict[str, Any]:
        return {**app_config, "LOG_FORMAT": "json"}

    def test_the_access_line_gets_the_same_context(self, app: Flask, token: str, auth_headers):
        served, alone = both(app, STATUS, f"token={token}", auth_headers)
        assert not served.by_flask
        context = served.environ[ACCESS_CONTEXT_KEY]
        assert context == alone.environ[ACCESS_CONTEXT_KEY] == ("default", "orders", RULE)


def test_an_unknown_request_hook_keeps_the_fast_path_out(app_config: dict[str, Any]) -> None:
    app = create_app(app_config)
    with app.app_context():
        db.create_all()
    inner = app.wsgi_app.wsgi_app
    app.wsgi_app = inner

    @app.after_request
    def stamp(response):
        response.headers["X-Stamp"] = "1"
        return response

    assert unknown_hooks(app) == ["stamp"]
    assert install(app) is False
    assert app.wsgi_app is inner
    with app.app_context():
        db.engine.dispose()
