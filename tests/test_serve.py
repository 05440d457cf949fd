"""``make serve`` for real: gunicorn with the project's settings, its workers' background worker.

Starts gunicorn (``gunicorn.conf.py``: migrations once in the master, a worker
thread in each process) on a free loopback port over a fresh SQLite file, and
walks the README: a key from the CLI, a pipeline, a file connector, changes in,
delivery and a reset done by the served processes alone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
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


def _is_gone(pid: int) -> bool:
    """Whether the process has exited (gone, or a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _connector_row(database: Path) -> tuple:
    """(lease_owner, committed_length, delivered_seq) of the only connector."""
    with sqlite3.connect(database) as conn:
        return conn.execute(
            "SELECT lease_owner, committed_length, delivered_seq FROM connectors"
        ).fetchone()


def test_sigterm_lets_requests_finish_and_the_background_worker_give_its_lease_back(
    tmp_path: Path,
) -> None:
    """SIGTERM to gunicorn: a request half sent goes on to a 200, and the worker
    thread that was delivering finishes its claim and releases the connector,
    instead of dying with the process and leaving the lease to expire."""
    settings = {"WORKER_POLL_INTERVAL": 0.05, "DELIVERY_CONCURRENCY": 1,
                "DELIVERY_BATCH_SIZE": 5, "WORKER_LEASE_SECONDS": 30}  # fmt: skip
    pidfile = tmp_path / "gunicorn.pid"
    with faults.served(tmp_path, settings, "--pid", str(pidfile)) as (base, env):
        key = subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "api-keys", "create", "k", "--role", "write"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {key}"
        assert s.post(f"{base}/v0/pipelines", json={"name": "orders", "views": ["totals"]}).ok
        connector = {"name": "sink1", "transport": {"name": "file", "config": {"path": "t.jsonl"}}}
        assert s.post(f"{base}/v0/pipelines/orders/views/totals/connectors", json=connector).ok
        assert s.post(f"{base}/v0/pipelines/orders/start").ok
        changes = f"{base}/v0/pipelines/orders/views/totals/changes"
        # A backlog of thousands of small batches: delivery is still under way below.
        for start in range(0, 10_000, 1000):
            batch = [{"insert": {"id": i, "pad": "z" * 30}} for i in range(start, start + 1000)]
            assert s.post(changes, json=batch).ok
        # The background worker is in the middle of a claim (it holds the lease).
        _wait_for(lambda: _connector_row(tmp_path / "serve.db")[0] is not None, timeout=30)

        # A request in flight: headers and half its body sent.
        body = json.dumps([{"insert": {"id": -1}}, {"insert": {"id": -2}}]).encode()
        port = int(base.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        slow.sendall(
            f"POST /v0/pipelines/orders/views/totals/changes HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.5)  # the request is read and waiting for the rest of its body

        master = int(pidfile.read_text())
        os.kill(master, signal.SIGTERM)
        stopped_at = time.monotonic()
        time.sleep(0.5)
        slow.sendall(body[10:])
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
        slow.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]

        _wait_for(lambda: _is_gone(master), timeout=25)
        assert time.monotonic() - stopped_at < 20  # gunicorn's graceful_timeout

    owner, committed, delivered = _connector_row(tmp_path / "serve.db")
    assert 0 < delivered < 10_002, "delivery was not under way at SIGTERM"
    assert owner is None, "the lease was left to expire"
    sink = tmp_path / "sinks" / "default" / "t.jsonl"
    assert sink.stat().st_size == committed  # stopped between batches, nothing half-written
    assert len(faults.sink_lines(sink)) == delivered


def _delivery_pids(database: Path) -> set[int]:
    """The pids of the worker processes with a heartbeat (gunicorn's delivery processes)."""
    try:
        with sqlite3.connect(database) as conn:
            return {pid for (pid,) in conn.execute("SELECT pid FROM worker_processes")}
    except sqlite3.OperationalError:  # not migrated yet
        return set()


def _descendants(pid: int) -> set[int]:
    """Every live process under ``pid`` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def test_a_killed_delivery_process_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the delivery process mid-stream: gunicorn starts another, which takes the
    connector over once the lease runs out; the file sink ends with every change once."""
    settings = {"WORKER_LEASE_SECONDS": 3, "DELIVERY_BATCH_SIZE": 40}
    database = tmp_path / "serve.db"
    with faults.served(tmp_path, settings) as (base, env):
        key = subprocess.run(
            [str(BIN / "flask"), "--app", "wsgi", "api-keys", "create", "k", "--role", "write"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {key}"
        assert s.post(f"{base}/v0/pipelines", json={"name": "orders", "views": ["totals"]}).ok
        connector = {"name": "sink1", "transport": {"name": "file", "config": {"path": "t.jsonl"}}}
        assert s.post(f"{base}/v0/pipelines/orders/views/totals/connectors", json=connector).ok
        assert s.post(f"{base}/v0/pipelines/orders/start").ok
        (first,) = _wait_for(lambda: _delivery_pids(database), timeout=30)
        changes = f"{base}/v0/pipelines/orders/views/totals/changes"
        pushed = 0
        for batch in range(30):
            rows = [{"insert": {"id": pushed + i, "pad": "z" * 20}} for i in range(100)]
            assert s.post(changes, json=rows).ok
            pushed += len(rows)
            if batch == 10:
                os.kill(first, signal.SIGKILL)
        # gunicorn starts another delivery process, which writes a heartbeat of its own.
        _wait_for(lambda: _delivery_pids(database) - {first}, timeout=30)
        sink = tmp_path / "sinks" / "default" / "t.jsonl"
        _wait_for(lambda: len(faults.sink_lines(sink)) >= pushed, timeout=60)
        time.sleep(0.5)  # nothing more comes
        lines = faults.sink_lines(sink)
    assert len(lines) == pushed
    assert sorted(line["insert"]["id"] for line in lines) == list(range(pushed))


def test_a_server_whose_master_was_killed_restarts_on_its_port_at_once(tmp_path: Path) -> None:
    """SIGKILL of the gunicorn master leaves no process behind (no orphan keeps the port
    or goes on delivering): request workers and delivery processes see their parent gone
    within seconds, and a new server binds the same port and serves."""
    pidfile = tmp_path / "gunicorn.pid"
    port = faults.free_port()
    with faults.served(tmp_path, {}, "--pid", str(pidfile), workers=2, port=port):
        master = int(pidfile.read_text())
        _wait_for(lambda: _delivery_pids(tmp_path / "serve.db"), timeout=30)
        below = _descendants(master)
        assert len(below) >= 4  # 2 request workers, the dirty arbiter, a delivery process
        os.kill(master, signal.SIGKILL)
        # Each notices its parent gone within a second or two (not after a drain of 20 s).
        _wait_for(lambda: all(_is_gone(pid) for pid in below), timeout=10)
        pidfile.unlink()
    # The port is free: a new server binds it (gunicorn would give up on a taken port).
    with faults.served(tmp_path, {}, "--pid", str(pidfile), port=port) as (base, _env):
        assert requests.get(f"{base}/healthz", timeout=5).ok


def test_two_servers_on_one_host_keep_their_own_delivery_processes(tmp_path: Path) -> None:
    """gunicorn names a dirty arbiter's pid file after the server's name, and a starting
    master kills the arbiter that file names: each server is named after its address."""
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    with faults.served(first, {}):
        before = _wait_for(lambda: _delivery_pids(first / "serve.db"), timeout=30)
        with faults.served(second, {}):
            theirs = _wait_for(lambda: _delivery_pids(second / "serve.db"), timeout=30)
            time.sleep(3)  # an arbiter killed as an orphan would be replaced by now
            assert _delivery_pids(first / "serve.db") == before
            assert _delivery_pids(second / "serve.db") == theirs
            assert not any(_is_gone(pid) for pid in before | theirs)
