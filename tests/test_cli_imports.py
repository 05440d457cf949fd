"""The app and its command line start without the sink libraries, nor the JWT ones.

deltalake, pyarrow and psycopg load only when a connector of their kind is
validated or used (:mod:`app.transports`); PyJWT and cryptography only when a
JWT is verified or its keys are loaded (:mod:`app.auth.jwt`). Each check runs in a fresh
interpreter: this test process has long loaded them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("deltalake", "pyarrow", "psycopg", "jwt", "cryptography")
ROOT = Path(__file__).resolve().parent.parent

# Runs the installed command's entry point in this interpreter, once per call.
PRELUDE = f"""
import json, sys

def cli(*args):
    from app.cli import main

    sys.argv = ["pipeline-manager", *args]
    try:
        main()
    except SystemExit as exit:
        assert not exit.code, (args, exit.code)

def report():
    print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))
"""


def loaded_after(tmp_path: Path, code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter on a new SQLite database; return the HEAVY it loaded."""
    env = {
        **os.environ,
        "PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'cli.db'}",
        "PIPELINE_MANAGER_SECRET_KEY": "test-secret-key",
        "PIPELINE_MANAGER_SINK_DIR": str(tmp_path / "sinks"),
        "PIPELINE_MANAGER_BACKGROUND_WORKER": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + code + "\nreport()\n"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_building_the_app_and_its_document_loads_no_sink_library(tmp_path: Path):
    code = """
from app import create_app

app = create_app()
assert app.test_client().get("/openapi.json").status_code == 200
"""
    assert loaded_after(tmp_path, code) == []


def test_commands_load_no_sink_library(tmp_path: Path):
    code = """
cli("--help")
cli("db", "upgrade")
cli("api-keys", "create", "ops")
cli("api-keys", "list")
cli("pipelines", "create", "orders", "--view", "totals")
cli("connectors", "add", "orders", "totals", "sink1", "--transport", "file", "--path", "t.jsonl")
cli("connectors", "list", "orders", "totals")
"""
    assert loaded_after(tmp_path, code) == []


def test_a_delta_connector_loads_deltalake_and_pyarrow_only(tmp_path: Path):
    """The check above would pass for nothing if it could not see a library load."""
    code = """
cli("db", "upgrade")
cli("pipelines", "create", "orders", "--view", "totals")
cli("connectors", "add", "orders", "totals", "lake", "--transport", "delta", "--path", "t")
"""
    assert loaded_after(tmp_path, code) == ["deltalake", "pyarrow"]
