"""Load over real sockets: gunicorn serving the app, ``wrk`` on 127.0.0.1 driving it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
CONF = Path(__file__).resolve().parent / "gunicorn_conf.py"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    """What one wrk run reported."""

    requests_per_second: float
    latency_ms: dict[str, float]
    non_2xx: int
    socket_errors: str


def free_port() -> int:
    """Return a port on 127.0.0.1 that nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> WrkResult:
    """Read requests/s, latency percentiles and errors out of wrk's report."""
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not match:
        raise RuntimeError(f"cannot read wrk's report:\n{output}")
    latency = {
        p: _ms(v, u)
        for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:\s*(.+)", output)
    return WrkResult(
        requests_per_second=float(match.group(1)),
        latency_ms=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
    )


@contextlib.contextmanager
def gunicorn(
    target: str, env: dict[str, str], ready_path: str, headers: dict[str, str]
) -> Iterator[str]:
    """Serve ``target`` with gunicorn on a free local port; yield its base URL."""
    port = free_port()
    env = {**env, "BENCH_BIND": f"127.0.0.1:{port}"}
    process = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
        [sys.executable, "-m", "gunicorn", "-c", str(CONF), target],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {process.stderr.read()[-2000:]}")
            try:
                # The socket is bound before the workers have imported the app: wait for them.
                answer = requests.get(base + ready_path, headers=headers, timeout=30)
                if answer.status_code == 200:
                    break
                raise RuntimeError(f"GET {ready_path} answered {answer.status_code}: {answer.text}")
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start within 30s") from None
                time.sleep(0.2)
        for _ in range(20):  # every worker past its first request
            requests.get(base + ready_path, headers=headers, timeout=30)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def run_wrk(url: str, seconds: int, connections: int, headers: dict[str, str]) -> WrkResult:
    """Drive ``url`` with wrk for ``seconds``; return its report."""
    argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    return parse_wrk(done.stdout)


def measure(
    service: Any, seconds: int, connections: int, workers: int, threads: int, rounds: int = 3
) -> list[tuple[str, WrkResult]] | str:
    """Run wrk against a bare Flask app, /healthz and reset_status; return results or a note.

    All servers run at once and wrk visits them in turn, ``rounds`` times, for
    ``seconds / rounds`` each, so that a busy moment of the machine hits every
    target alike; each target's result is the median of its rounds.
    """
    if shutil.which("wrk") is None:
        return "skipped: wrk is not installed (apt-get install -y wrk)"
    env = dict(os.environ)
    for name in ("SQLALCHEMY_DATABASE_URI", "SECRET_KEY", "SINK_DIR"):
        env[f"PIPELINE_MANAGER_{name}"] = str(service.config[name])
    env.update({"BENCH_WORKERS": str(workers), "BENCH_THREADS": str(threads)})
    auth = {"Authorization": f"Bearer {service.api_key}"} if service.api_key else {}
    runs = [("plain Flask {}", "bench.plain_app:app", "/", {})]
    if service.has_rule("/healthz"):
        runs.append(("GET /healthz", "wsgi:app", "/healthz", {}))
    runs.append(("reset_status", "wsgi:app", service.status_path(), auth))
    per_run = max(1, round(seconds / rounds))
    samples: dict[str, list[WrkResult]] = {name: [] for name, *_ in runs}
    with contextlib.ExitStack() as stack:
        bases = {
            name: stack.enter_context(gunicorn(target, env, path, headers))
            for name, target, path, headers in runs
        }
        for _ in range(rounds):
            for name, _target, path, headers in runs:
                samples[name].append(run_wrk(bases[name] + path, per_run, connections, headers))
    return [(name, median_result(results)) for name, results in samples.items()]


def median_result(results: list[WrkResult]) -> WrkResult:
    """The median of several runs: requests/s and each latency percentile on their own."""
    percentiles = {p for r in results for p in r.latency_ms}
    return WrkResult(
        requests_per_second=statistics.median(r.requests_per_second for r in results),
        latency_ms={
            p: statistics.median(r.latency_ms[p] for r in results if p in r.latency_ms)
            for p in percentiles
        },
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors="; ".join(r.socket_errors for r in results if r.socket_errors),
    )
