"""A client generated from the OpenAPI document, as integrators make one: ``make client``.

``make client`` writes the document (``pipeline-manager openapi write``) and
generates a Python client from it with ``openapi-python-client
--fail-on-warning`` (its settings in ``examples/client-config.yml``:
newline-delimited JSON bodies mapped to binary, as the generator's
documentation advises). These tests run that target into a temporary folder,
check the document it used is the one the app serves, parse the service's real
answers (nulls included) with the generated models, and run
``examples/walkthrough_client.py``, the README's walk-through through the
client, against a real gunicorn.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import create_app
from app.extensions import db
from app.pipelines.models import Pipeline, View
from tests import faults
from tests.conftest import Api

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VENV = BIN.parent
SCRIPT = ROOT / "examples" / "walkthrough_client.py"
PACKAGE = "pipeline_manager_client"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make client`` into a temporary folder: ``openapi.json`` and ``client/``."""
    if not (BIN / "openapi-python-client").exists():
        pytest.fail("openapi-python-client is a dev dependency: pip install -e '.[dev]'")
    folder = tmp_path_factory.mktemp("build")
    # -o: take the installation as up to date (tests/test_makefile.py tests that rule).
    make = ["make", "-C", str(ROOT), "-o", f"{VENV}/.installed", f"VENV={VENV}"]
    done = subprocess.run(
        [*make, "client", f"BUILD={folder}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (folder / "client" / PACKAGE / "__init__.py").exists(), done.stdout
    return folder


@pytest.fixture
def generated(build: Path, monkeypatch: pytest.MonkeyPatch):
    """The generated package, imported from the build folder."""
    monkeypatch.syspath_prepend(str(build / "client"))
    yield importlib.import_module(PACKAGE)
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_make_client_generates_from_the_served_document(build: Path, anon_client) -> None:
    written = json.loads((build / "openapi.json").read_text())
    assert written == anon_client.get("/openapi.json").get_json()


def test_the_client_has_an_operation_per_operation_id(generated) -> None:
    api = Path(importlib.import_module(f"{PACKAGE}.api").__file__).parent
    operations = {module.stem for module in api.glob("*/*.py")}  # api/<tag>/<operation_id>.py
    assert {"reset_connector", "get_reset_status", "list_connector_resets"} <= operations


def test_the_client_models_parse_real_answers_nulls_included(
    generated, running_pipeline: Api
) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    client = running_pipeline.client
    base = "/v0/pipelines/orders/views/totals/connectors/sink1"
    # A connector never reset: the stats' last_status and last_phase are null.
    stats = client.get(f"{base}/stats").get_json()
    assert stats["resets"]["last_status"] is None
    parsed = models.ConnectorStats.from_dict(stats)
    assert parsed.connector_name == "sink1" and parsed.transport.name == "file"
    token = running_pipeline.reset()
    status = models.ResetStatusOut.from_dict(running_pipeline.status(token).get_json())
    assert status.pipeline_name == "orders" and status.started_at is None
    history = client.get(f"{base}/resets").get_json()
    assert [models.ResetHistoryItem.from_dict(item).status for item in history]
    pipelines = client.get("/v0/pipelines").get_json()
    assert models.PipelineOut.from_dict(pipelines[0]).name == "orders"


def test_push_changes_sends_a_json_list(generated) -> None:
    """``make client`` fixes the generator's ``isinstance(body, list[...])`` (a TypeError)."""
    push = importlib.import_module(f"{PACKAGE}.api.view_data.push_changes")
    models = importlib.import_module(f"{PACKAGE}.models")
    change = models.PushChangesJsonBodyItem.from_dict({"insert": {"id": 1}})
    kwargs = push._get_kwargs("orders", "totals", body=[change])
    assert kwargs["json"] == [{"insert": {"id": 1}}]
    assert kwargs["headers"]["Content-Type"] == "application/json"


def test_the_walkthrough_script_runs_through_the_client_against_gunicorn(
    build: Path, tmp_path: Path
) -> None:
    """``examples/walkthrough_client.py``, twice (it starts fresh), on a real gunicorn."""
    sink = tmp_path / "sinks" / "default" / "out" / "totals.jsonl"
    with faults.served(tmp_path, {"WORKER_POLL_INTERVAL": 0.1}) as (base, env):
        key = subprocess.run(
            [str(BIN / "pipeline-manager"), "api-keys", "create", "me", "--role", "write"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        path = os.pathsep.join([str(build / "client"), env.get("PYTHONPATH", "")])
        for attempt in (1, 2):
            done = subprocess.run(
                [sys.executable, str(SCRIPT), "--url", base, "--key", key, "--timeout", "30"],
                env={**env, "PYTHONPATH": path},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (attempt, done.stdout, done.stderr)
            steps = dict(line.split(": ", 1) for line in done.stdout.splitlines())
            assert json.loads(steps["pushed"])["inserts"] == 2, done.stdout
            reset = json.loads(steps["reset"])
            assert reset["status"] == "complete" and reset["phase"] == "done", done.stdout
            assert reset["snapshot_records"] == reset["replayed_records"] == 2, done.stdout
            assert json.loads(steps["old token"])["error_code"] == "PipelineRestarted"
            # The sink holds the view, exactly: the snapshot the reset replayed.
            assert faults.fold_file(sink) == view_contents(env), (attempt, sink.read_text())
            assert len(faults.sink_lines(sink)) == 2


def view_contents(env: dict[str, str]) -> Counter:
    """The view ``orders/totals`` as the served app's database holds it."""
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": env["PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI"],
            "SECRET_KEY": "read-only",
            "BACKGROUND_WORKER": False,
        }
    )
    with app.app_context():
        view_id = db.session.execute(
            sa.select(View.id)
            .join(Pipeline, Pipeline.id == View.pipeline_id)
            .where(Pipeline.tenant == "default", Pipeline.name == "orders")
        ).scalar_one()
        contents = faults.view_multiset(view_id)
        db.session.remove()
        db.engine.dispose()
    assert contents, "the view is empty"
    return contents
