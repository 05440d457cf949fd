"""The app and its command line start without the sink libraries, nor the JWT ones.

deltalake, pyarrow and psycopg load only when a connector of their kind is
validated or used (:mod:`app.transports`); PyJWT and cryptography only when a
JWT is verified or its keys are loaded (:mod:`app.auth.jwt`). ``--help`` loads
no database library and no resource's commands, and a resource's command
neither the web side (flask-smorest, the routes) nor Alembic (:mod:`app.cli`).
Each check runs in a fresh interpreter: this test process has long loaded them all.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("deltalake", "pyarrow", "psycopg", "jwt", "cryptography")
ROOT = Path(__file__).resolve().parent.parent

# Runs the installed command's entry point in this interpreter, once per call.
PRELUDE = """
import json, sys

def cli(*args):
    from app.cli import main

    sys.argv = ["pipeline-manager", *args]
    try:
        main()
    except SystemExit as exit:
        assert not exit.code, (args, exit.code)

def report(names):
    print(json.dumps([name for name in names if name in sys.modules]))
"""


def loaded_after(tmp_path: Path, code: str, names: tuple[str, ...] = HEAVY) -> list[str]:
    """Run ``code`` in a fresh interpreter on a SQLite database; return the ``names`` it loaded."""
    env = {
        **os.environ,
        "PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'cli.db'}",
        "PIPELINE_MANAGER_SECRET_KEY": "test-secret-key",
        "PIPELINE_MANAGER_SINK_DIR": str(tmp_path / "sinks"),
        "PIPELINE_MANAGER_BACKGROUND_WORKER": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + code + f"\nreport({names!r})\n"],
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


# What `--help` must not load: it lists the commands from app.cli's tables.
DATABASE_AND_SERVICES = (
    "sqlalchemy",
    "flask_sqlalchemy",
    "alembic",
    "marshmallow",
    "flask_smorest",
    "app.extensions",
    "app.errors",
    "app.cli_helpers",
    "app.auth.cli",
    "app.pipelines.cli",
)
# What a resource's command must not load: the app it runs in serves no requests.
WEB_SIDE = (
    "flask_smorest",
    "webargs",
    "apispec",
    "flask_migrate",
    "alembic",
    "app.web",
    "app.docs",
    "app.console",
    "app.auth.routes",
    "app.pipelines.routes",
)


def test_help_loads_neither_the_database_nor_any_command_group(tmp_path: Path):
    assert loaded_after(tmp_path, 'cli("--help")', DATABASE_AND_SERVICES) == []


def test_a_group_s_help_loads_that_group_alone_and_builds_no_app(tmp_path: Path):
    code = """
cli("api-keys", "--help")
cli("api-keys", "list", "--help")
"""
    names = ("app.auth.cli", "app.pipelines.cli", "app.resets.cli", "app.web", "alembic")
    assert loaded_after(tmp_path, code, names) == ["app.auth.cli"]
    assert not (tmp_path / "cli.db").exists()


def test_a_resource_command_loads_no_web_side_nor_alembic(tmp_path: Path):
    loaded_after(tmp_path, 'cli("db", "upgrade")')
    code = """
cli("api-keys", "create", "ops")
cli("api-keys", "list")
cli("pipelines", "create", "orders", "--view", "totals")
cli("pipelines", "list")
"""
    assert loaded_after(tmp_path, code, WEB_SIDE) == []


def test_listing_keys_as_a_table_loads_no_schema_library(tmp_path: Path):
    """The operator's most frequent command: marshmallow loads only to validate or dump JSON."""
    loaded_after(tmp_path, 'cli("db", "upgrade")\ncli("api-keys", "create", "ops")')
    assert loaded_after(tmp_path, 'cli("api-keys", "list")', ("marshmallow",)) == []
    assert loaded_after(tmp_path, 'cli("api-keys", "list", "--json")', ("marshmallow",)) == [
        "marshmallow"
    ]


def _imported(path: Path) -> set[str]:
    """The ``app`` modules a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("app")}


def test_the_command_line_s_modules_import_each_other_one_way():
    """app.cli names the groups and imports one when it runs; a group imports only the helpers."""
    from app.cli import GROUPS

    modules = {group.module for group in GROUPS.values()}
    found = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts) for path in ROOT.glob("app/*/cli.py")
    }
    assert modules == found, "every resource's cli.py is named in app.cli.GROUPS"
    assert not _imported(ROOT / "app/cli.py") & modules
    assert not _imported(ROOT / "app/cli_helpers.py") & {"app.cli", *modules}
    for module in modules:
        assert not _imported(ROOT / f"{module.replace('.', '/')}.py") & {
            "app.cli",
            *modules - {module},
        }
