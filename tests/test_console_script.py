"""The ``pipeline-manager`` console script: the flask commands by the project's own name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "pipeline-manager"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'cli.db'}",
        "PIPELINE_MANAGER_SECRET_KEY": "console-script-test",
        "PIPELINE_MANAGER_SINK_DIR": str(tmp_path / "sinks"),
    }
    env.pop("FLASK_APP", None)
    return subprocess.run(
        [str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_script_is_installed_and_needs_no_app_option(tmp_path: Path) -> None:
    assert SCRIPT.exists(), "pip install -e . installs the pipeline-manager script"
    migrated = _run(tmp_path, "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    created = _run(tmp_path, "pipelines", "create", "orders", "--view", "totals", "--json")
    assert created.returncode == 0, created.stderr
    listed = _run(tmp_path, "pipelines", "list", "--json")
    assert [p["name"] for p in json.loads(listed.stdout)] == ["orders"]
    key = _run(tmp_path, "api-keys", "create", "ops", "--role", "admin")
    assert key.returncode == 0 and key.stdout.strip().startswith("apikey:"), key.stderr


def test_an_unmigrated_database_names_the_script_in_its_one_line(tmp_path: Path) -> None:
    result = _run(tmp_path, "pipelines", "list")
    assert result.returncode == 1
    assert "pipeline-manager db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_key_tells_how_to_make_one_with_the_script(anon_client) -> None:
    body = anon_client.get("/v0/pipelines").get_json()
    assert "pipeline-manager api-keys create" in body["message"]


def test_the_help_lists_the_app_s_commands_with_their_own_help(app) -> None:
    """``--help`` reads app.cli's tables instead of building the app: they must say what it has."""
    import click
    from flask.cli import ScriptInfo

    from app.cli import APP_COMMANDS, GROUPS, PipelineManagerGroup

    group = PipelineManagerGroup(create_app=lambda: app)
    with click.Context(group, obj=ScriptInfo(create_app=lambda: app)) as ctx:
        listed = group.list_commands(ctx)
        assert set(listed) == {*app.cli.commands, *group.commands}
        for name, text in {**{n: g.help for n, g in GROUPS.items()}, **APP_COMMANDS}.items():
            assert group.get_command(ctx, name).help == app.cli.commands[name].help == text, name


def test_the_script_s_help_lists_every_command(tmp_path: Path) -> None:
    result = _run(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line]
    assert names == [
        *("api-keys", "connectors", "db", "notifications", "openapi", "pipelines"),
        *("resets", "routes", "run", "shell", "views", "worker"),
    ]
    assert "Create, list and revoke API keys." in result.stdout
