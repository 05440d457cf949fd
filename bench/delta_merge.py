"""A keyed Delta table (the delta transport's mode ``rows``): one batch merged into a big table.

``python -m bench.delta_merge [--rows 1000000] [--changes 10000]``: a table of
``--rows`` records keyed by ``id`` (``id`` long, ``name`` string, ``total``
double) is made by one reset, then one batch of ``--changes`` log rows
(updates, each a delete and an insert of one key, and new keys) is applied
by the driver: one MERGE commit on the key, its position with it. Prints the
seconds of each step and checks the table after. No service database: the
driver is called as the delivery worker calls it.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from uuid import uuid4

TARGET_SECONDS = 2.0


def _record(i: int, name: str) -> str:
    """A record's JSON text: what ``json.dumps`` gives, spelt out (it is built a million times)."""
    return f'{{"id":{i},"name":{json.dumps(name)},"total":{i / 4!r}}}'


def run(rows: int, changes: int, folder: Path) -> dict[str, float]:
    """Make the table, merge one batch; return the seconds of each step."""
    from flask import Flask

    from app.delivery.sinks import PipelineRef, SinkTarget, ViewRef
    from app.transports.delta import DeltaTransport

    app = Flask("bench")
    app.config.update(SINK_DIR=str(folder), WORKER_LEASE_SECONDS=30.0)
    (folder / "default").mkdir(parents=True, exist_ok=True)
    config = {
        "path": "keyed",
        "mode": "rows",
        "columns": {"id": "long", "name": "string", "total": "double"},
        "key": ["id"],
    }
    target = SinkTarget(
        id=1,
        uid=str(uuid4()),
        name="bench",
        transport="delta",
        config=config,
        view_id=1,
        view=ViewRef("v", PipelineRef("p", "default")),
    )
    driver = DeltaTransport()
    timings: dict[str, float] = {}
    with app.app_context():
        # The records as the replay hands them over, made before the clock starts: the
        # reset's time is the driver's (staging them, then the switch).
        batches = [
            [_record(i, "n") for i in range(first, min(rows, first + 50_000))]
            for first in range(0, rows, 50_000)
        ]
        started = time.perf_counter()
        reset = driver.begin_reset(target, 1)
        for batch in batches:
            reset.append(batch)
        reset.switch_in(rows, lambda: None)
        reset.discard()
        timings["reset"] = time.perf_counter() - started
        rng = random.Random(1)
        log: list[tuple[int, int, str]] = []
        updated = rng.sample(range(rows), changes // 4)
        for i in updated:  # half the batch: updates, a delete and an insert each
            log += [(0, -1, _record(i, "n")), (0, 1, _record(i, "u"))]
        log += [(0, 1, _record(rows + i, "new")) for i in range(changes - len(log))]
        log = [(rows + 1 + n, weight, text) for n, (_, weight, text) in enumerate(log)]
        started = time.perf_counter()
        applied = driver.apply(target, log, epoch=1)
        timings["merge"] = time.perf_counter() - started
        assert not applied.skipped and driver.position(target) == log[-1][0]
    from deltalake import DeltaTable

    table = DeltaTable(str(folder / "default" / "keyed"))
    assert table.history(1)[0]["operation"] == "MERGE"
    assert table.to_pyarrow_dataset().count_rows() == rows + changes // 2
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        timings = run(args.rows, args.changes, Path(folder))
    merge = timings["merge"]
    verdict = "within" if merge <= TARGET_SECONDS else "over"
    reset = timings["reset"]
    print(f"reset of {args.rows:,} rows: {reset:.2f}s ({args.rows / reset:,.0f} records/s)")
    print(
        f"one batch of {args.changes:,} changes merged into {args.rows:,} rows: {merge:.2f}s "
        f"({verdict} the {TARGET_SECONDS:.0f} s target)"
    )


if __name__ == "__main__":
    main()
