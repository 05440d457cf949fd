"""Reset tokens: signed references to one reset of one pipeline's incarnation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.extensions import db
from app.resets.tokens import MAX_TOKEN_LENGTH, ResetTokens, reset_tokens
from tests.conftest import Api, assert_error

MAX_AGE = 60


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Tokens expire after a minute here, to tell the setting from the default."""
    return {**app_config, "RESET_TOKEN_MAX_AGE": MAX_AGE}


@contextmanager
def sibling_app(app_config: dict[str, Any], client: FlaskClient, **config: Any) -> Iterator[Any]:
    """Yield a client of a second app on the same database, configured with ``config``.

    It stands for the service after a restart with new settings.
    """
    other = create_app({**app_config, **config})
    other_client = other.test_client()
    other_client.environ_base.update(client.environ_base)  # the same credentials
    try:
        yield other_client
    finally:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()


def status(client: FlaskClient, token: str, pipeline: str = "orders") -> Any:
    """GET the reset_status of a token."""
    return client.get(f"/v0/pipelines/{pipeline}/reset_status", query_string={"token": token})


def reason(response: Any) -> str:
    """Return ``details.reason`` of a 400 InvalidResetToken answer."""
    return assert_error(response, 400, "InvalidResetToken")["details"]["reason"]


def test_token_carries_pipeline_incarnation_and_reset_ids_but_nothing_secret(
    running_pipeline: Api, app: Flask
) -> None:
    body = running_pipeline.client.post(
        "/v0/pipelines/orders/views/totals/connectors/sink1/reset"
    ).get_json()
    pipeline = running_pipeline.client.get("/v0/pipelines/orders").get_json()
    with app.app_context():
        payload = body["token"].rsplit(".", 2)[0]
        claims = reset_tokens()._serializer.load_payload(payload.encode())
    assert claims == {"p": pipeline["id"].replace("-", ""), "i": 1, "r": claims["r"]}
    assert claims["r"] == body["reset_id"].replace("-", "")
    assert app.config["SECRET_KEY"] not in body["token"]
    assert len(body["token"]) < MAX_TOKEN_LENGTH


def test_tampered_payload_is_refused(running_pipeline: Api, app: Flask) -> None:
    """Changing a claim (here: the reset id) and keeping the signature is caught."""
    api = running_pipeline
    token = api.reset()
    api.action("orders", "stop")
    api.action("orders", "start")
    api.reset()
    with app.app_context():
        serializer = reset_tokens()._serializer
        payload, timestamp, signature = token.rsplit(".", 2)
        claims = serializer.load_payload(payload.encode())
        claims["i"] = 2  # as if issued in the live incarnation
        forged = serializer.dump_payload(claims).decode()
    assert reason(api.status(f"{forged}.{timestamp}.{signature}")) == "bad_signature"
    assert_error(api.status(token), 410, "PipelineRestarted")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],
        # Base64's last character carries padding bits too: change its high bits.
        lambda t: t[:-1] + ("A" if t[-1] not in "ABCD" else "Q"),
        lambda t: t.rsplit(".", 1)[0] + ".",
        lambda t: t.split(".", 1)[1],
    ],
    ids=["truncated", "last-char-changed", "signature-dropped", "payload-dropped"],
)
def test_mangled_token_is_refused(running_pipeline: Api, mangle: Any) -> None:
    token = running_pipeline.reset()
    assert reason(running_pipeline.status(mangle(token))) in {"bad_signature", "malformed"}


def test_another_pipelines_token_is_refused(running_pipeline: Api) -> None:
    api = running_pipeline
    api.create_pipeline("billing")
    api.add_file_connector("billing", path="billing.jsonl")
    api.action("billing", "start")
    assert reason(api.status(api.reset("billing"), pipeline="orders")) == "wrong_pipeline"
    assert reason(api.status(api.reset("orders"), pipeline="billing")) == "wrong_pipeline"


def test_deleted_and_recreated_pipeline_refuses_the_old_pipelines_token(
    running_pipeline: Api,
) -> None:
    api = running_pipeline
    old_token = api.reset()
    old_id = api.client.get("/v0/pipelines/orders").get_json()["id"]
    api.action("orders", "stop")
    assert api.client.delete("/v0/pipelines/orders").status_code == 204
    # Same name, same view, same connector, same incarnation number: only the id differs.
    assert api.create_pipeline()["id"] != old_id
    api.add_file_connector()
    api.action("orders", "start")
    api.reset()
    assert reason(api.status(old_token)) == "wrong_pipeline"


def test_token_signed_with_a_rotated_out_key_in_the_fallbacks_is_accepted(
    running_pipeline: Api, app_config: dict[str, Any], client: FlaskClient, run_resets: Any
) -> None:
    token = running_pipeline.reset()
    run_resets()  # so that the next request queues a new reset, with a new token
    with sibling_app(
        app_config,
        client,
        SECRET_KEY="the-new-key",
        SECRET_KEY_FALLBACKS=[app_config["SECRET_KEY"]],
    ) as rotated:
        r = status(rotated, token)
        assert r.status_code == 200, r.get_json()
        # New tokens are signed with the new key, which the old app does not know.
        new_token = rotated.post("/v0/pipelines/orders/views/totals/connectors/sink1/reset")
        assert new_token.status_code == 202
        assert reason(status(client, new_token.get_json()["token"])) == "bad_signature"


def test_fallback_keys_may_be_given_as_a_comma_separated_string(
    running_pipeline: Api, app_config: dict[str, Any], client: FlaskClient
) -> None:
    """The form an environment variable gives them in."""
    token = running_pipeline.reset()
    fallbacks = f"some-older-key, {app_config['SECRET_KEY']}"
    with sibling_app(
        app_config, client, SECRET_KEY="the-new-key", SECRET_KEY_FALLBACKS=fallbacks
    ) as rotated:
        assert status(rotated, token).status_code == 200


def test_token_signed_with_a_key_no_longer_listed_is_refused(
    running_pipeline: Api, app_config: dict[str, Any], client: FlaskClient
) -> None:
    token = running_pipeline.reset()
    with sibling_app(app_config, client, SECRET_KEY="the-new-key") as rotated:
        assert reason(status(rotated, token)) == "bad_signature"


def test_token_signed_with_an_unknown_key_is_refused(running_pipeline: Api, app: Flask) -> None:
    genuine = running_pipeline.reset()
    with app.app_context():
        claims = reset_tokens().read(genuine)
    stranger = ResetTokens("a-key-the-service-never-had", [], MAX_AGE)
    forged = stranger.issue(claims.pipeline_id, claims.incarnation, claims.reset_id)
    assert reason(running_pipeline.status(forged)) == "bad_signature"


@pytest.mark.parametrize(("age", "expected"), [(MAX_AGE - 5, 200), (MAX_AGE + 5, 400)])
def test_token_expires_after_the_configured_maximum_age(
    running_pipeline: Api, monkeypatch: pytest.MonkeyPatch, age: int, expected: int
) -> None:
    token = running_pipeline.reset()
    later = int(time.time()) + age
    monkeypatch.setattr("itsdangerous.timed.TimestampSigner.get_timestamp", lambda self: later)
    r = running_pipeline.status(token)
    assert r.status_code == expected, r.get_json()
    if expected == 400:
        body = assert_error(r, 400, "InvalidResetToken")
        assert body["details"] == {"reason": "expired", "max_age_seconds": MAX_AGE}


@pytest.mark.parametrize("size", [MAX_TOKEN_LENGTH + 1, 64 * 1024, 1024 * 1024])
def test_absurdly_long_token_is_malformed_not_a_server_error(
    running_pipeline: Api, size: int
) -> None:
    genuine = running_pipeline.reset()
    assert reason(running_pipeline.status(genuine + "A" * (size - len(genuine)))) == "malformed"
