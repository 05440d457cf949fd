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
