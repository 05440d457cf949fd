"""A database without the schema (or with an old one) is named, with the fix, in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from flask_migrate import upgrade

from app import create_app
from app.extensions import db
from tests.conftest import assert_error
from tests.faults import FLASK, ROOT, worker_env


@pytest.fixture
def bare_config(tmp_path: Path) -> dict:
    """Settings of an app on a new, empty SQLite file (no migrations run)."""
    return {
        "TESTING": True,
        "SECRET_KEY": "schema-check",
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'bare.db'}",
        "SINK_DIR": str(tmp_path / "sinks"),
        "BACKGROUND_WORKER": False,
    }


def test_the_api_answers_503_naming_the_fix_until_the_schema_is_there(bare_config):
    app = create_app(bare_config)
    client = app.test_client()
    body = assert_error(
        client.get("/v0/pipelines", headers={"Authorization": "Bearer apikey:x"}),
        503,
        "ServiceUnavailable",
    )
    assert "make migrate" in body["message"] and body["details"]["reason"] == "schema_not_ready"
    assert client.get("/healthz").status_code == 200  # liveness: the database answers
    with app.app_context():
        upgrade()
    r = client.get("/v0/pipelines", headers={"Authorization": "Bearer apikey:x"})
    assert_error(r, 401, "AuthenticationFailed")  # past the schema check now


def test_an_old_schema_is_named_too(bare_config):
    app = create_app(bare_config)
    with app.app_context():
        upgrade(revision="3f1c2b7d9e10")
    body = assert_error(app.test_client().get("/v0/pipelines"), 503, "ServiceUnavailable")
    assert body["message"].startswith("The database schema is not the one this code needs")


@pytest.mark.parametrize("command", [["pipelines", "list"], ["worker"]])
def test_commands_on_an_empty_database_say_what_to_run_in_one_line(bare_config, command):
    result = subprocess.run(
        [FLASK, "--app", "wsgi", *command],
        cwd=ROOT, env=worker_env(bare_config), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    first, *rest = result.stderr.strip().splitlines()
    assert first == (
        "Error: The database has no schema yet: run `make migrate` "
        "(or `pipeline-manager db upgrade`) (ServiceUnavailable)"
    )
    assert rest == ['{"reason": "schema_not_ready"}']


@pytest.mark.parametrize("command", [["pipelines", "create"], ["resets", "cancel"]])
def test_help_answers_on_an_empty_database(bare_config, command):
    result = subprocess.run(
        [FLASK, "--app", "wsgi", *command, "--help"],
        cwd=ROOT, env=worker_env(bare_config), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:") and result.stderr == ""


def test_a_schema_built_from_the_models_is_taken_as_current(bare_config):
    app = create_app(bare_config)
    with app.app_context():
        db.create_all()
    assert_error(app.test_client().get("/v0/pipelines"), 401, "AuthenticationFailed")


def test_the_migration_heads_are_the_ones_alembic_finds():
    """The schema check reads the heads without Alembic (a command's start); they must agree."""
    from alembic.script import ScriptDirectory

    from app.database import migration_heads
    from app.extensions import MIGRATIONS_DIR

    assert migration_heads() == set(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())


def test_migration_heads_follow_branches_and_merges(tmp_path: Path):
    from app.database import migration_heads

    scripts = {"a": "None", "b": "'a'", "c": '"a"', "d": '("b", "c")'}
    for folder, names in (("branched", "abc"), ("merged", "abcd")):
        (tmp_path / folder).mkdir()
        for name in names:
            text = f'revision: str = "{name}"\ndown_revision = {scripts[name]}\n'
            (tmp_path / folder / f"{name}_step.py").write_text(text)
    assert migration_heads(tmp_path / "branched") == {"b", "c"}
    assert migration_heads(tmp_path / "merged") == {"d"}
