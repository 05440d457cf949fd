"""Shared helpers of the fault tests: real worker processes, signals, and the sink fold.

Every test of a delivery guarantee ends the same way: fold the sink back into
a multiset of records and compare it with the view. :func:`fold` and
:func:`view_multiset` are that comparison, in one place.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))


def canonical(record: Any) -> str:
    """A record's canonical JSON, exactly as the view stores it (``store.canonical``)."""
    from app.view_data.store import canonical as stored_form

    return stored_form(record)


def fold(changes: Iterable[Mapping[str, Any]]) -> Counter:
    """Fold ``{"insert": r}``/``{"delete": r}`` changes into a multiset of canonical records.

    Raises ``AssertionError`` on a delete of a record not present at that
    point (a sink that applied changes out of order, or lost an insert).
    """
    folded: Counter = Counter()
    for change in changes:
        ((op, record),) = change.items()
        key = canonical(record)
        folded[key] += 1 if op == "insert" else -1
        assert folded[key] >= 0, f"a delete before its insert: {key}"
    return +folded


def sink_lines(path: Path) -> list[dict]:
    """The JSON lines of a file sink (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def fold_file(path: Path) -> Counter:
    """Fold a file sink's lines into a multiset of canonical records."""
    return fold(sink_lines(path))


def view_multiset(view_id: int) -> Counter:
    """The view's contents as a multiset of canonical records (inside an app context)."""
    from app.view_data import store

    return Counter({canonical(record): weight for record, weight in store.contents(view_id)})


def view_log(view_id: int) -> list[dict]:
    """The view's whole change log, in order, as ``{"insert": r}``/``{"delete": r}`` changes.

    Inside an app context, like :func:`view_multiset`.
    """
    from app.delivery.reader import change_texts, read_log

    changes: list[dict] = []
    after = 0
    while rows := read_log(view_id, after, 5000):
        changes.extend(json.loads(text) for text in change_texts(rows))
        after = rows[-1][0]
    return changes


def _keyed(change: Mapping[str, Any]) -> tuple[str, str]:
    ((op, record),) = change.items()
    return op, canonical(record)


def snapshot_position(lines: Iterable[Mapping[str, Any]], log: list[dict]) -> int | None:
    """The log position S such that a sink holds the view as of S, then every change after S.

    That is what a file sink holds after its last reset: the view as of S as
    inserts (in any order; a record of weight n, n times), then exactly
    ``log[S:]`` in order. A sink never reset has S = 0: its lines are the log.
    Returns the smallest such S, or None when there is none: a duplicated,
    lost, reordered or foreign line leaves none, even one that folds away.
    """
    keyed = [_keyed(change) for change in lines]
    logged = [_keyed(change) for change in log]
    common = 0
    while common < min(len(keyed), len(logged)) and keyed[-1 - common] == logged[-1 - common]:
        common += 1
    # The tail after S must be a common suffix, so S >= len(log) - common; and a
    # longer tail only moves matching inserts from the snapshot to the tail.
    s = len(logged) - common
    head = keyed[: len(keyed) - common]
    if any(op != "insert" for op, _key in head):
        return None
    return s if Counter(key for _op, key in head) == _fold_keys(logged[:s]) else None


def _fold_keys(changes: list[tuple[str, str]]) -> Counter:
    folded: Counter = Counter()
    for op, key in changes:
        folded[key] += 1 if op == "insert" else -1
    return +folded


def time_passes() -> None:
    """Let time pass: every backoff runs out, and every connector with timed work is due now.

    Call it inside an app context, before a commit. Tests that run a lease out
    by writing its time into the past call it too: the due index keeps each
    connector's next time of its own (``app.delivery.due``).
    """
    import sqlalchemy as sa

    from app.connectors.models import Connector
    from app.database import db_time
    from app.extensions import db
    from app.resets.models import Reset

    past = db_time(-3600)
    for model in (Connector, Reset):
        db.session.execute(
            sa.update(model).where(model.next_attempt_at.is_not(None)).values(next_attempt_at=past)
        )
    db.session.execute(
        sa.update(Connector).where(Connector.due_at.is_not(None)).values(due_at=past)
    )


def worker_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """The environment of a process configured with ``settings`` (``PIPELINE_MANAGER_*``)."""
    env = {**os.environ, **{f"PIPELINE_MANAGER_{k}": _env_value(v) for k, v in settings.items()}}
    env["PIPELINE_MANAGER_BACKGROUND_WORKER"] = "false"
    return env


def _env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def start_worker(settings: Mapping[str, Any], log: Path, *args: str) -> subprocess.Popen:
    """Start ``flask worker`` in a process of its own, configured through the environment."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [FLASK, "--app", "wsgi", "worker", *args],
            cwd=ROOT,
            env=worker_env(settings),
            stdout=out,
            stderr=out,
        )


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "the worker") -> None:
    """Poll until ``condition()`` holds, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL: no handler, no cleanup, leases left taken."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def pause_process(process: subprocess.Popen) -> None:
    """SIGSTOP: the process freezes wherever it is, holding what it holds."""
    os.kill(process.pid, signal.SIGSTOP)


def resume_process(process: subprocess.Popen) -> None:
    """SIGCONT: a frozen process goes on from where it stopped."""
    os.kill(process.pid, signal.SIGCONT)


def is_stopped(process: subprocess.Popen) -> bool:
    """Whether every thread of the process is stopped (Linux: ``/proc/<pid>/task/*/stat``)."""
    try:
        tasks = list(Path(f"/proc/{process.pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except OSError:
        return False
    return all(state in ("T", "t") for state in states)


def pause_when(process: subprocess.Popen, condition: Callable[[], bool], tries: int = 200) -> int:
    """SIGSTOP the process at an instant where ``condition()`` holds while it is stopped.

    Each try stops the process, waits until all its threads are stopped, and
    checks; when the condition does not hold there, the process runs on for a
    few milliseconds and the next try stops it elsewhere. Returns the tries
    taken; fails after ``tries``.
    """
    for attempt in range(1, tries + 1):
        pause_process(process)
        wait_for(lambda: is_stopped(process), timeout=5, what="the process to stop")
        if condition():
            return attempt
        resume_process(process)
        time.sleep(random.uniform(0.001, 0.01))
    raise AssertionError(f"the condition did not hold at any of {tries} stops")


def stop(process: subprocess.Popen) -> None:
    """Stop a process the polite way (SIGINT), or kill it after 10 s."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGCONT)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        kill(process)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(
    tmp_path: Path,
    settings: Mapping[str, Any],
    *args: str,
    workers: int = 1,
    port: int | None = None,
) -> Iterator[tuple[str, dict[str, str]]]:
    """Run gunicorn with ``gunicorn.conf.py`` on a free loopback port until the block ends.

    ``settings`` become ``PIPELINE_MANAGER_*`` variables (a SQLite file in
    ``tmp_path``, a secret key and the sink folder are filled in); ``args`` go on
    gunicorn's command line. Yields the base URL and the environment (for
    ``flask`` commands on the same instance). Waits for ``/healthz``, then, on the
    way out, stops gunicorn with SIGTERM (SIGKILL after 20 s).
    """
    port = port or free_port()
    env = {
        **os.environ,
        **{
            f"PIPELINE_MANAGER_{k}": _env_value(v)
            for k, v in {
                "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'serve.db'}",
                "SECRET_KEY": "serve-test-key",
                "SINK_DIR": str(tmp_path / "sinks"),
                **settings,
                "BIND": f"127.0.0.1:{port}",
                "WORKERS": str(workers),
            }.items()
        },
    }
    process = subprocess.Popen(
        [str(Path(FLASK).with_name("gunicorn")), "-c", "gunicorn.conf.py", *args, "wsgi:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{base}/healthz", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not up, or slow to boot
            assert process.poll() is None, process.stderr.read().decode()
            return False

    try:
        wait_for(up, timeout=30, what="gunicorn to serve /healthz")
        yield base, env
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
