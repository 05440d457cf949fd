"""The application factory and the first start on a fresh machine."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask_migrate
import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.extensions import db
from app.resets.tokens import reset_tokens

# Settings that keep a bare app quiet in tests (no background thread).
QUIET = {"TESTING": True, "BACKGROUND_WORKER": False}


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point new apps at an instance folder that does not exist yet."""
    folder = tmp_path / "fresh" / "instance"
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(folder))
    for name in ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "SQLALCHEMY_DATABASE_URI"):
        monkeypatch.delenv(f"PIPELINE_MANAGER_{name}", raising=False)
    return folder


@pytest.fixture
def made_apps() -> Iterator[list[Flask]]:
    """Collect the apps a test makes and close their databases afterwards."""
    apps: list[Flask] = []
    yield apps
    for made in apps:
        with made.app_context():
            db.session.remove()
            db.engine.dispose()


def make(made_apps: list[Flask], config: dict[str, Any] | None = None) -> Flask:
    """Create an app and remember it for clean-up."""
    made = create_app(config)
    made_apps.append(made)
    return made


def test_factory_honours_test_config(instance: Path, made_apps: list[Flask]) -> None:
    assert not make(made_apps, {"BACKGROUND_WORKER": False}).testing
    configured = make(
        made_apps, {**QUIET, "RESET_TOKEN_MAX_AGE": 42, "SINK_DIR": "/somewhere/else"}
    )
    assert configured.testing
    assert configured.config["RESET_TOKEN_MAX_AGE"] == 42
    assert configured.config["SINK_DIR"] == "/somewhere/else"
    with configured.app_context():
        assert reset_tokens().max_age == 42


def test_environment_overrides_defaults_and_test_config_overrides_environment(
    instance: Path, made_apps: list[Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_MANAGER_RESET_TOKEN_MAX_AGE", "120")
    monkeypatch.setenv("PIPELINE_MANAGER_RETRY_AFTER_SECONDS", "7")
    configured = make(made_apps, {**QUIET, "RETRY_AFTER_SECONDS": 3})
    assert configured.config["RESET_TOKEN_MAX_AGE"] == 120
    assert configured.config["RETRY_AFTER_SECONDS"] == 3


def test_instance_config_file_is_read(instance: Path, made_apps: list[Flask]) -> None:
    instance.mkdir(parents=True)
    (instance / "config.py").write_text("RESET_TOKEN_MAX_AGE = 99\n")
    assert make(made_apps, QUIET).config["RESET_TOKEN_MAX_AGE"] == 99


def test_first_start_creates_instance_folder_database_and_private_secret_key(
    instance: Path, made_apps: list[Flask]
) -> None:
    assert not instance.exists()
    fresh = make(made_apps, QUIET)
    assert instance.is_dir()
    key_file = instance / "secret_key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 32
    assert fresh.config["SECRET_KEY"] == key
    assert fresh.config["SQLALCHEMY_DATABASE_URI"].endswith(str(instance / "pipeline-manager.db"))

    with fresh.app_context():
        flask_migrate.upgrade()
        tables = set(sa.inspect(db.engine).get_table_names())
    assert (instance / "pipeline-manager.db").is_file()
    assert {"pipelines", "views", "connectors", "resets", "alembic_version"} <= tables


def test_second_start_reuses_the_key_so_tokens_survive_restarts(
    instance: Path, made_apps: list[Flask]
) -> None:
    first = make(made_apps, QUIET)
    claims = (uuid.uuid4(), 3, uuid.uuid4())
    with first.app_context():
        token = reset_tokens().issue(*claims)

    second = make(made_apps, QUIET)
    assert second.config["SECRET_KEY"] == first.config["SECRET_KEY"]
    with second.app_context():
        read = reset_tokens().read(token)
    assert (read.pipeline_id, read.incarnation, read.reset_id) == claims


def test_configured_secret_key_leaves_no_key_file(instance: Path, made_apps: list[Flask]) -> None:
    configured = make(made_apps, {**QUIET, "SECRET_KEY": "from-config"})
    assert configured.config["SECRET_KEY"] == "from-config"
    assert not (instance / "secret_key").exists()


def test_another_instance_gets_another_key(
    instance: Path, made_apps: list[Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make(made_apps, QUIET)
    elsewhere = tmp_path / "other" / "instance"
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(elsewhere))
    second = make(made_apps, QUIET)
    assert second.config["SECRET_KEY"] != first.config["SECRET_KEY"]
