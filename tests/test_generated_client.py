"""A client generated from the OpenAPI document, as integrators make one.

``openapi-python-client`` generates a Python client with ``--fail-on-warning``
(newline-delimited JSON bodies mapped to binary with its
``content_type_overrides``, as its documentation advises), and the generated
models parse the service's real answers, those with nulls included.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Api

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
CONFIG = """\
content_type_overrides:
  application/x-ndjson: application/octet-stream
  application/jsonl: application/octet-stream
"""


@pytest.fixture
def generated(tmp_path: Path, anon_client, monkeypatch: pytest.MonkeyPatch):
    """Generate the client package ``pmclient`` from the served document; import it."""
    if not GENERATOR.exists():
        pytest.fail("openapi-python-client is a dev dependency: pip install -e '.[dev]'")
    (tmp_path / "spec.json").write_text(json.dumps(anon_client.get("/openapi.json").get_json()))
    (tmp_path / "config.yml").write_text(CONFIG)
    env_path = f"{GENERATOR.parent}:{os.environ.get('PATH', '')}"
    done = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            "spec.json",
            "--config",
            "config.yml",
            "--fail-on-warning",
            "--meta",
            "none",
            "--output-path",
            "pmclient",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": env_path},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("pmclient")
    for name in [m for m in sys.modules if m == "pmclient" or m.startswith("pmclient.")]:
        del sys.modules[name]


def test_the_client_has_an_operation_per_operation_id(generated) -> None:
    resets = importlib.import_module("pmclient.api.resets")
    path = Path(resets.__file__).parent
    assert {"reset_connector.py", "get_reset_status.py", "list_connector_resets.py"} <= {
        p.name for p in path.iterdir()
    }


def test_the_client_models_parse_real_answers_nulls_included(
    generated, running_pipeline: Api
) -> None:
    models = importlib.import_module("pmclient.models")
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
