"""Section d (``--memory``): peak RSS of delivery and of replay, at several view sizes.

For each size a fresh database gets the bench pipeline (through the API) and
then a view of that many records, built with bulk SQL (:func:`bench.bulk.fill_view`):
its Z-set and a change log that the connector has not delivered yet. Then,
each in a process of its own so that one measurement cannot inflate another:

1. ``delivery``: the worker delivers the whole log to the file sink;
2. ``replay``: a reset of the connector (issued through the API by the parent)
   is carried out: its snapshot replayed into the sink.

The child process runs ``python -m bench.memory`` and reports, as one JSON
line, its RSS before the work (the app built, the database opened) and its
peak RSS (``VmHWM``) at the end. The parent checks the sink's line count.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import Row
from bench.service import Service

CONFIG_ENV = "BENCH_MEMORY_CONFIG"
ROOT = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kb() -> int:
    """This process's peak resident set size, in kB."""
    peak = _status_kb("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there, kB on Linux
            peak //= 1024
    return peak


def child() -> dict[str, Any]:
    """In the child: build the app, run the worker until idle, report memory and time."""
    import sqlalchemy as sa

    from app import create_app, worker
    from app.extensions import db

    app = create_app(json.loads(os.environ[CONFIG_ENV]))
    with app.app_context():
        db.session.execute(sa.text("SELECT 1"))
        db.session.rollback()
        start_kb = _status_kb("VmRSS") or peak_rss_kb()
        started = time.perf_counter()
        units = 0
        try:
            while worker.run_once():
                units += 1
        finally:
            db.session.remove()
        seconds = time.perf_counter() - started
    return {"start_kb": start_kb, "peak_kb": peak_rss_kb(), "seconds": seconds, "units": units}


def run_child(service: Service) -> dict[str, Any]:
    """Run the worker in a new process on the service's database; return its report."""
    config = {key: service.config[key] for key in ("SQLALCHEMY_DATABASE_URI", "SINK_DIR")}
    config.update(SECRET_KEY=service.config["SECRET_KEY"], BACKGROUND_WORKER=False)
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory"],
        cwd=ROOT,
        env={**os.environ, CONFIG_ENV: json.dumps(config)},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def count_lines(path: Path) -> int:
    """The number of lines of a file."""
    with open(path, "rb") as sink:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: sink.read(1 << 20), b""))


def measure(workdir: Path, postgres_url: str | None, records: int) -> dict[str, Any]:
    """Build a view of ``records`` records; measure delivery then replay, a process each."""
    from bench import bulk

    workdir.mkdir(parents=True, exist_ok=True)
    service = Service(workdir, postgres_url, name="memory")
    try:
        service.setup_pipeline()
        service.run_worker_until_idle()  # the setup's reset, on the empty view
        view_id = service.scalar("SELECT id FROM views")
        build = bulk.fill_view(service, view_id, records)
        delivery = run_child(service)
        lines = count_lines(service.sink_path)
        if lines != records:
            raise RuntimeError(f"delivery left {lines} lines in the sink, not {records}")
        token = service.issue_reset()
        replay = run_child(service)
        status = service.status(token)
        lines = count_lines(service.sink_path)
        if status["status"] != "complete" or lines != records:
            raise RuntimeError(f"the replay left {lines} lines, not {records}: {status}")
        return {"records": records, "build": build, "delivery": delivery, "replay": replay}
    finally:
        service.close()


def section_memory(workdir: Path, postgres_url: str | None, sizes: list[int]) -> list[Row]:
    """Section d: peak RSS of delivery and replay at each view size, smallest first."""
    results = [measure(workdir / f"records-{n}", postgres_url, n) for n in sorted(sizes)]
    rows = []
    for kind, label in (("delivery", "stream delivery"), ("replay", "snapshot replay")):
        smallest = results[0]
        for result in results:
            records, report = result["records"], result[kind]
            peak = report["peak_kb"] / 1024
            note = (
                f"+{(report['peak_kb'] - report['start_kb']) / 1024:.0f} MB over the process "
                f"before its work; {records / report['seconds']:,.0f} records/s"
            )
            if result is not smallest:
                base = smallest[kind]["peak_kb"] / 1024
                note += f"; {peak / base:.2f}x the peak at {smallest['records']:,} records"
            if kind == "delivery":
                note += f"; view built with bulk SQL in {result['build']:.1f}s"
            rows.append(Row("d", f"peak RSS, {label}, {records:,}-record view", peak, "MB", note))
    return rows


if __name__ == "__main__":
    print(json.dumps(child()))
