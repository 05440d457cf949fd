"""``wrk`` on 127.0.0.1: drive served URLs for a bounded time, in rounds, and read its report."""

from __future__ import annotations

import re
import shutil
import socket
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    """What one wrk run reported."""

    requests_per_second: float
    latency_ms: dict[str, float]
    non_2xx: int
    socket_errors: str


def installed() -> bool:
    """Whether ``wrk`` is on the PATH (``apt-get install -y wrk``)."""
    return shutil.which("wrk") is not None


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


def run_wrk(url: str, seconds: int, connections: int, headers: dict[str, str]) -> WrkResult:
    """Drive ``url`` with wrk for ``seconds``; return its report."""
    argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    return parse_wrk(done.stdout)


def rounds(
    targets: dict[str, tuple[str, dict[str, str]]],
    seconds: float,
    connections: int,
    count: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[WrkResult]]:
    """Drive each target (name -> URL and headers) with wrk in turn, ``count`` times.

    Every server runs at once and wrk visits them one after another, round
    after round, for ``seconds`` each (in reverse order every other round), so
    that a busy moment of the machine hits every target alike; the caller takes
    the medians (or the median of the rounds' ratios).
    """
    per_run = max(1, round(seconds))
    samples: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for index in range(count):
        if progress:
            progress(f"wrk round {index + 1} of {count}")
        names = list(targets) if index % 2 == 0 else list(reversed(targets))
        for name in names:
            url, headers = targets[name]
            samples[name].append(run_wrk(url, per_run, connections, headers))
    return samples


def round_ratios(results: list[WrkResult], base: list[WrkResult]) -> float:
    """The median over rounds of ``results``' requests/s over ``base``'s in the same round."""
    return statistics.median(
        r.requests_per_second / b.requests_per_second for r, b in zip(results, base, strict=True)
    )


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
