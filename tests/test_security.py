"""Sink networks, redacted secrets, regular sink files, the access log and the database's mode.

Every server here listens on 127.0.0.1. A name that resolves to a denied
address ("rebind.test" -> 169.254.169.254) is simulated by a fake resolver, and
the tests check that no connection is even tried: no traffic leaves the host.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import urllib3.util.connection
from flask import Flask

from app import create_app
from app.extensions import db
from app.transports import TransportError
from app.transports.destinations import DEFAULT_DENIED, DestinationPolicy
from app.transports.file import SinkFile, StagingFile
from app.transports.http import HttpTransport, parse_settings, redact_url
from tests import faults
from tests.conftest import Api, assert_error

FAST = {"max_retries": 0, "timeout": {"connect": 1, "read": 0.3}}


def target(url: str) -> SimpleNamespace:
    """A connector as the worker hands it to the driver; settings parsed, not checked."""
    config = parse_settings({"url": url, **FAST}).as_config()
    view = SimpleNamespace(name="totals", pipeline=SimpleNamespace(name="orders", tenant="default"))
    return SimpleNamespace(uid=str(uuid.uuid4()), name="hook", config=config, view=view)


def send(driver: HttpTransport, url: str) -> int:
    return driver.send(target(url), [{"insert": {"id": 1}}], kind="batch", epoch=1,
                       first_seq=1, last_seq=1)  # fmt: skip


@contextmanager
def policy(app: Flask, **settings: Any) -> Iterator[None]:
    """An app context whose HTTP_SINK_* settings are ``settings``."""
    saved = {k: app.config.get(k) for k in settings}
    app.config.update(settings)
    try:
        with app.app_context():
            yield
    finally:
        app.config.update(saved)


@pytest.fixture
def resolver(monkeypatch) -> dict[str, list[str]]:
    """A fake DNS: names put in the returned dict resolve to its addresses; others as usual."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if isinstance(host, str) and host in names:
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port or 0, 0, 0) if ":" in a else (a, port or 0))
                for a in names[host]
            ]  # fmt: skip
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


@pytest.fixture
def connects(monkeypatch) -> list[tuple]:
    """Every address the http transport connects to."""
    seen: list[tuple] = []
    real = urllib3.util.connection.create_connection

    def create_connection(address, *args, **kwargs):
        seen.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return seen


LOOPBACK_DENIED = [*DEFAULT_DENIED, "127.0.0.0/8", "::1"]

# -- sink networks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "[::ffff:127.0.0.1]"]
)
def test_every_spelling_of_a_denied_address_is_refused_without_connecting(
    app, driver, receiver, connects, host
) -> None:
    url = f"http://{host}:{receiver.server.server_port}/in"
    with policy(app, HTTP_SINK_DENIED_NETWORKS=LOOPBACK_DENIED), pytest.raises(TransportError) as e:
        send(driver, url)
    assert "destination not allowed" in str(e.value)
    assert e.value.poison is True
    assert connects == [] and receiver.messages == []


def test_this_host_is_denied_by_default_and_loopback_is_not(app, driver, receiver) -> None:
    port = receiver.server.server_port
    with app.app_context():
        with pytest.raises(TransportError, match="destination not allowed"):
            send(driver, f"http://0:{port}/in")  # 0.0.0.0 reaches the server itself
        assert receiver.messages == []
        send(driver, f"http://127.0.0.1:{port}/in")
    assert receiver.outcomes == ["applied"]


def test_a_name_that_rebinds_to_metadata_is_refused_at_connect_time(
    app, driver, receiver, resolver, connects
) -> None:
    port = receiver.server.server_port
    url = f"http://rebind.test:{port}/in"
    resolver["rebind.test"] = ["127.0.0.1"]
    with app.app_context():
        send(driver, url)
        assert receiver.headers[0]["Host"] == f"rebind.test:{port}"  # the name, not the address
        driver.close()  # no pooled connection: the next message connects again
        resolver["rebind.test"] = ["169.254.169.254"]
        connects.clear()
        with pytest.raises(TransportError, match="destination not allowed") as e:
            send(driver, url)
        assert e.value.poison is True
        resolver["rebind.test"] = ["127.0.0.1", "169.254.169.254"]  # every address is checked
        with pytest.raises(TransportError, match="destination not allowed"):
            send(driver, url)
        resolver["rebind.test"] = ["fd00:ec2::254"]
        with pytest.raises(TransportError, match="destination not allowed"):
            send(driver, f"https://rebind.test:{port}/in")
    assert connects == []
    assert len(receiver.messages) == 1


def test_an_allowed_list_admits_only_what_it_names(app, driver, receiver, resolver) -> None:
    port = receiver.server.server_port
    resolver["sink.example.test"] = ["127.0.0.1"]
    with (
        policy(app, HTTP_SINK_ALLOWED_NETWORKS=["10.0.0.0/8"]),
        pytest.raises(TransportError, match="destination not allowed"),
    ):
        send(driver, f"http://127.0.0.1:{port}/in")
    with policy(app, HTTP_SINK_ALLOWED_NETWORKS=["127.0.0.0/8"]):
        send(driver, f"http://127.0.0.1:{port}/in")
    with policy(app, HTTP_SINK_ALLOWED_NETWORKS=["*.example.test"]):
        send(driver, f"http://sink.example.test:{port}/in")
    # Denied wins over allowed. (A pooled connection was checked when it was made: the
    # policy is fixed for a process, so a test that changes it starts a new pool.)
    driver.close()
    with (
        policy(
            app, HTTP_SINK_ALLOWED_NETWORKS=["127.0.0.0/8"], HTTP_SINK_DENIED_NETWORKS=["127.0.0.1"]
        ),
        pytest.raises(TransportError, match="destination not allowed"),
    ):
        send(driver, f"http://127.0.0.1:{port}/in")
    assert receiver.outcomes == ["applied", "applied"]


def test_a_bad_network_setting_is_named(app, driver, receiver) -> None:
    with (
        policy(app, HTTP_SINK_DENIED_NETWORKS=["10.0.0.0/33"]),
        pytest.raises(TransportError, match="sink network settings are not valid"),
    ):
        send(driver, receiver.url)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://0/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://100.100.100.200/",
    ],
)
def test_a_connector_to_a_denied_host_is_refused_when_created(api: Api, url: str) -> None:
    api.create_pipeline()
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": {"url": url}}},
    )
    body = assert_error(r, 400, "InvalidRequest")
    assert "transport.config.url" in body["details"]


@contextmanager
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@contextmanager
def banner_server(banner: bytes) -> Iterator[int]:
    """A port that speaks something other than HTTP (an SSH banner) and hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(banner)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_refused_silent_and_foreign_ports_read_alike(app, driver) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    messages = []
    with (
        app.app_context(),
        silent_port() as silent,
        banner_server(b"SSH-2.0-OpenSSH_9.6\r\n") as foreign,
    ):
        for port in (closed, silent, foreign):
            with pytest.raises(TransportError) as e:
                send(driver, f"http://127.0.0.1:{port}/in")
            messages.append(str(e.value).replace(str(port), "PORT"))
    assert len(set(messages)) == 1, messages
    assert "could not connect or got no answer" in messages[0]


# -- secrets ---------------------------------------------------------------------------------

SECRET_URL = "http://alice:s3cret-pw@127.0.0.1:9/in?access_token=tok-123&region=eu"
SHOWN_URL = "http://alice:***@127.0.0.1:9/in?access_token=***&region=eu"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SECRET_URL, SHOWN_URL),
        ("https://[::1]:8443/hook", "https://[::1]:8443/hook"),
        ("https://u:p@[::1]:8443/x?sig=abc&sv=1", "https://u:***@[::1]:8443/x?sig=***&sv=1"),
        ("https://hooks.test/a?code=xyz&x=1#frag", "https://hooks.test/a?code=***&x=1#***"),
        ("https://user@hooks.test/a", "https://user@hooks.test/a"),
    ],
)
def test_redact_url_hides_passwords_and_secret_parameters(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_answers_show_connector_secrets_redacted_and_store_them_whole(
    app, api: Api, read_headers
) -> None:
    api.create_pipeline()
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "hook", "transport": {"name": "http", "config": {"url": SECRET_URL}}},
    )
    assert r.status_code == 201
    reader = app.test_client()
    answers = [
        r.get_json(),
        reader.get("/v0/pipelines/orders/views/totals/connectors/hook", headers=read_headers),
        reader.get("/v0/pipelines/orders/views/totals/connectors", headers=read_headers),
    ]
    texts = [json.dumps(a if isinstance(a, dict) else a.get_json()) for a in answers]
    for text in texts:
        assert "s3cret" not in text and "tok-123" not in text
        assert SHOWN_URL in text
    runner = app.test_cli_runner()
    shown = ("list", "orders"), ("show", "orders", "totals", "hook")
    for args in (*shown, *((*a, "--json") for a in shown)):
        out = runner.invoke(args=["connectors", *args])
        assert out.exit_code == 0, out.output
        assert "s3cret" not in out.output and "tok-123" not in out.output
        assert "alice:***@127.0.0.1:9" in out.output
    with app.app_context():
        from app.connectors.models import Connector

        assert db.session.execute(db.select(Connector)).scalar_one().config["url"] == SECRET_URL


def test_delivery_errors_and_logs_name_no_secret(app, driver, receiver, caplog) -> None:
    receiver.fail_next(1, 503)
    url = receiver.url.replace("http://", "http://alice:s3cret-pw@") + "?token=tok-123"
    settings = parse_settings(
        {"url": url, "max_retries": 1, "backoff": {"base": 0.01, "cap": 0.01}}
    )
    t = target(url)
    t.config = settings.as_config()
    with app.app_context(), caplog.at_level("DEBUG"):
        driver.send(t, [{"insert": {"id": 1}}], kind="batch", epoch=1, first_seq=1, last_seq=1)
        receiver.refuse(400, "no")
        with pytest.raises(TransportError) as e:
            driver.send(t, [{"insert": {"id": 2}}], kind="batch", epoch=1, first_seq=2, last_seq=2)
    assert "retry 1 of 1" in caplog.text
    for text in (caplog.text, str(e.value)):
        assert "s3cret" not in text and "tok-123" not in text


# -- regular sink files -----------------------------------------------------------------------


def test_a_fifo_is_refused_as_a_sink_when_created_and_when_written(
    app, api: Api, tmp_path: Path
) -> None:
    folder = tmp_path / "sinks" / "default"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pipe.jsonl")
    api.create_pipeline()
    r = api.client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "s", "transport": {"name": "file", "config": {"path": "pipe.jsonl"}}},
    )
    body = assert_error(r, 400, "InvalidRequest")
    assert body["details"]["transport.config.path"] == ["The path must name a regular file."]

    later = folder / "later.jsonl"
    os.mkfifo(later)  # put there after the connector was checked: no reader, must not block
    started = time.monotonic()
    with pytest.raises(TransportError, match="not a regular file"):
        SinkFile(later, "later.jsonl")
    staging = StagingFile.prefix(later)
    os.mkfifo(folder / f"{staging}7")
    with pytest.raises(TransportError, match="not a regular file"):
        StagingFile(later, "later.jsonl", 7)
    assert time.monotonic() - started < 1


def test_a_symbolic_link_swapped_in_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    link = tmp_path / "sink.jsonl"
    link.symlink_to(outside)
    with pytest.raises(TransportError):
        SinkFile(link, "sink.jsonl")
    assert outside.read_text() == "keep\n"


# -- the access log ---------------------------------------------------------------------------


def test_gunicorn_access_log_leaves_reset_tokens_out(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    settings = {"BACKGROUND_WORKER": "false"}
    with faults.served(tmp_path, settings, "--access-logfile", str(log)) as (base, _env):
        r = requests.get(
            f"{base}/v0/pipelines/orders/reset_status?view=totals&token=SECRET.TOKEN-value",
            headers={"Referer": f"{base}/docs?token=SECRET.TOKEN-value"},
            timeout=5,
        )
        assert r.status_code == 401
        faults.wait_for(
            lambda: "reset_status" in (log.read_text() if log.exists() else ""),
            timeout=10,
            what="the access log line",
        )
    text = log.read_text()
    assert "SECRET" not in text
    assert "GET /v0/pipelines/orders/reset_status?view=totals&token=*** HTTP/1.1" in text


# -- the database file ------------------------------------------------------------------------


def test_a_new_sqlite_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    old = os.umask(0o022)
    try:
        app = create_app({"TESTING": True, "SECRET_KEY": "k", "BACKGROUND_WORKER": False,
                          "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
                          "SINK_DIR": str(tmp_path / "sinks")})  # fmt: skip
        with app.app_context():
            db.create_all()
            with db.engine.connect() as conn:
                conn.exec_driver_sql("CREATE TABLE t (x)")
                conn.exec_driver_sql("INSERT INTO t VALUES (1)")
                conn.commit()
                files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
                modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
            db.engine.dispose()
    finally:
        os.umask(old)
    assert modes == {p.name: 0o600 for p in files}


def test_policy_parsing_accepts_cidrs_addresses_and_names() -> None:
    p = DestinationPolicy.parse(["10.0.0.0/8", "sink.test", "*.corp.test"], ["10.9.9.9"])
    assert p.allows("a.corp.test", ["192.0.2.1"])
    assert p.allows("SINK.test.", ["192.0.2.1"])
    assert p.allows("x", ["10.1.2.3"])
    assert not p.allows("x", ["10.9.9.9"])
    assert not p.allows("x", ["192.0.2.1"])
    with pytest.raises(ValueError):
        DestinationPolicy.parse(["10.0.0.0/40"], [])


# -- names in URLs that no row can hold ---------------------------------------------


_NAMELESS = ["a%00b", "x" * 300, "%C3%A9t%C3%A9", "a%0Ab"]


@pytest.mark.parametrize("name", _NAMELESS, ids=["nul", "overlong", "non-ascii", "newline"])
@pytest.mark.parametrize(
    ("method", "template", "error_code"),
    [
        ("GET", "/v0/pipelines/{n}", "UnknownPipelineName"),
        ("GET", "/v0/pipelines/{n}/reset_status?token=t", "UnknownPipelineName"),
        ("POST", "/v0/pipelines/{n}/start", "UnknownPipelineName"),
        ("GET", "/v0/pipelines/orders/views/{n}/connectors", "UnknownView"),
        ("GET", "/v0/pipelines/orders/views/totals/connectors/{n}", "UnknownConnector"),
        ("GET", "/v0/pipelines/orders/views/totals/connectors/{n}/stats", "UnknownConnector"),
        ("POST", "/v0/pipelines/orders/views/totals/connectors/{n}/reset", "UnknownConnector"),
        ("GET", "/v0/api_keys/{n}", "UnknownApiKey"),
        ("DELETE", "/v0/api_keys/{n}", "UnknownApiKey"),
    ],
)
def test_a_name_no_row_can_hold_is_404_on_every_engine(
    running_pipeline, method: str, template: str, error_code: str, name: str
) -> None:
    """PostgreSQL refuses a NUL in a text parameter: such names never reach the database."""
    r = running_pipeline.client.open(template.format(n=name), method=method)
    assert_error(r, 404, error_code)


def test_a_description_with_a_nul_is_400_on_every_engine(api) -> None:
    """PostgreSQL cannot store a NUL character: refused as bad input, never a 500."""
    r = api.client.post("/v0/pipelines", json={"name": "p", "views": ["v"], "description": "a\0b"})
    assert "description" in assert_error(r, 400, "InvalidRequest")["details"]
    api.create_pipeline("q", ("v",))
    r = api.client.patch("/v0/pipelines/q", json={"description": "a\0b"})
    assert "description" in assert_error(r, 400, "InvalidRequest")["details"]
    assert api.client.get("/v0/pipelines/q").get_json()["description"] == ""


def test_a_forged_host_header_cannot_steer_a_redirect(anon_client):
    """Werkzeug builds the redirect to a path's canonical form from the Host header; the
    service answers with the path alone."""
    r = anon_client.get("/docs", headers={"Host": "evil.example"})
    assert r.status_code == 308
    assert r.headers["Location"] == "/docs/"


def test_trusted_hosts_refuses_other_host_names(app, client):
    app.config["TRUSTED_HOSTS"] = ["pipelines.internal", "localhost"]
    r = client.get("/v0/pipelines", headers={"Host": "evil.example"})
    assert_error(r, 400, "InvalidRequest")
    assert client.get("/v0/pipelines", headers={"Host": "pipelines.internal"}).status_code == 200


@pytest.mark.parametrize("path", ["/docs/", "/openapi.json"])
def test_the_api_reference_cannot_be_framed_and_runs_only_its_own_scripts(anon_client, path):
    r = anon_client.get(path)
    assert r.status_code == 200
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
