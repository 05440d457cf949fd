"""``make serve`` for real: gunicorn with the project's settings, its workers' background worker.

Starts gunicorn (``gunicorn.conf.py``: migrations once in the master, a worker
thread in each process) on a free loopback port over a fresh SQLite file, and
walks the README: a key from the CLI, a pipeline, a file connector, changes in,
delivery and a reset done by the served processes alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests import faults

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture
def served(tmp_path: Path):
    """A gunicorn on a free port; yields (base URL, environment, sink folder)."""
    with faults.served(tmp_path, {"WORKER_POLL_INTERVAL": 0.1}, workers=2) as (base, env):
        yield base, env, tmp_path / "sinks" / "default"


def test_gunicorn_serves_the_walkthrough_and_its_workers_do_the_work(served) -> None:
    base, env, sinks = served
    key = subprocess.run(
        [str(BIN / "flask"), "--app", "wsgi", "api-keys", "create", "serve", "--role", "write"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {key}"
    assert s.post(f"{base}/v0/pipelines", json={"name": "orders", "views": ["totals"]}).ok
    connector = {"name": "sink1", "transport": {"name": "file", "config": {"path": "t.jsonl"}}}
    assert s.post(f"{base}/v0/pipelines/orders/views/totals/connectors", json=connector).ok
    assert s.post(f"{base}/v0/pipelines/orders/start").json()["incarnation"] == 1
    changes = [{"insert": {"id": i}} for i in range(5)]
    assert s.post(f"{base}/v0/pipelines/orders/views/totals/changes", json=changes).ok

    sink = sinks / "t.jsonl"

    def delivered() -> list:
        lines = sink.read_text().splitlines() if sink.exists() else []
        return [json.loads(line) for line in lines] if len(lines) == 5 else []

    assert sorted(r["insert"]["id"] for r in _wait_for(delivered)) == list(range(5))

    r = s.post(f"{base}/v0/pipelines/orders/views/totals/connectors/sink1/reset")
    assert r.status_code == 202
    status_url = base + r.headers["Location"]

    def complete() -> dict:
        body = s.get(status_url).json()
        return body if body["status"] == "complete" else {}

    body = _wait_for(complete)
    assert (body["snapshot_records"], body["replayed_records"]) == (5, 5)
    assert len(sink.read_text().splitlines()) == 5  # emptied, then the snapshot

    assert s.post(f"{base}/v0/pipelines/orders/stop").ok
    assert s.post(f"{base}/v0/pipelines/orders/start").ok
    gone = s.get(status_url)
    assert gone.status_code == 410 and gone.json()["error_code"] == "PipelineRestarted"


def test_gunicorn_workers_are_ready_once_their_background_worker_runs(served) -> None:
    base, _env, _sinks = served

    def ready() -> dict | None:
        r = requests.get(f"{base}/readyz", timeout=5)
        return r.json() if r.status_code == 200 else None

    body = _wait_for(ready, timeout=30)
    assert body["checks"] == {"database": "ok", "schema": "ok", "worker": "ok"}
