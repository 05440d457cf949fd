"""A reset of a 200,000-record view replays it in bounded memory.

The replay runs in a worker process of its own, which samples its resident
memory while it replays; the growth over the replay is compared with what
holding the whole snapshot at once takes (measured with tracemalloc).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.connectors.models import Connector
from app.delivery.sinks import target_of
from app.extensions import db
from app.pipelines.service import get_pipeline
from app.transports.file import FileTransport
from app.view_data import service as view_data
from app.view_data import store

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 200_000
PUSH_BATCH = 20_000

# The worker process: one ResetExecutor pass. A thread samples its resident
# memory (VmRSS) meanwhile; it reports the RSS just before and the most during.
REPLAYER = """
import json, threading, time
from app import create_app
from app.resets.executor import ResetExecutor

def rss():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmRSS:")[1].split()[0]) * 1024

peak, done = [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

app = create_app()
with app.app_context():
    executor = ResetExecutor("replayer")
    before = rss()
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    count = executor.run_pending()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
print(json.dumps({"done": count, "seconds": seconds, "before": before, "peak": peak[0]}))
"""


def record(i: int) -> dict:
    """A record of the kind a view holds: a few fields, about 80 bytes of JSON."""
    return {"id": i, "customer": f"customer-{i % 5000:05d}", "total": i * 7 % 10_000, "ok": True}


def held_at_once() -> int:
    """Bytes that the whole snapshot takes when held in memory at once (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [{"insert": json.loads(store.canonical(record(i)))} for i in range(RECORDS)]
        size = tracemalloc.get_traced_memory()[0] - before
        del held
        return size
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_replaying_200k_records_keeps_the_worker_memory_bounded(running_pipeline, app, app_config):
    with app.app_context():
        view = view_data.writable_view(get_pipeline("default", "orders"), "totals")
        started = time.perf_counter()
        for start in range(0, RECORDS, PUSH_BATCH):
            batch = range(start, start + PUSH_BATCH)
            changes = [(store.INSERT, store.canonical(record(i))) for i in batch]
            view_data.push_changes(view, changes)
        ingest_rate = RECORDS / (time.perf_counter() - started)
        connector = db.session.execute(sa.select(Connector)).scalar_one()
        sink = FileTransport().path_of(target_of(connector))
        db.session.remove()
    token = running_pipeline.reset()

    env = {**os.environ, "PIPELINE_MANAGER_BACKGROUND_WORKER": "false"}
    for key in ("SQLALCHEMY_DATABASE_URI", "SINK_DIR", "SECRET_KEY"):
        env[f"PIPELINE_MANAGER_{key}"] = str(app_config[key])
    done = subprocess.run(
        [sys.executable, "-c", REPLAYER], cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["done"] == 1

    body = running_pipeline.status(token).get_json()
    assert body["status"] == "complete", body
    assert body["snapshot_records"] == body["replayed_records"] == RECORDS
    with open(sink, "rb") as fh:
        assert sum(1 for _line in fh) == RECORDS

    growth = report["peak"] - report["before"]
    whole = held_at_once()
    print(
        f"\ningest {ingest_rate:,.0f} records/s; replay {RECORDS / report['seconds']:,.0f} "
        f"records/s; worker RSS {report['before'] / 2**20:.0f} MiB before the replay, "
        f"+{growth / 2**20:.1f} MiB during it; the snapshot held at once: {whole / 2**20:.0f} MiB"
    )
    assert growth < whole / 8
