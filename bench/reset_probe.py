"""Where a served reset's time goes: several resets of one view, each timed in parts.

``python -m bench.reset_probe [--runs 7] [--records 100000] [--database-url URL]``

Section c times one reset (``POST .../reset`` until ``reset_status`` says
complete) against the raw baseline (target 5). This probe repeats that on one
server (``gunicorn.conf.py``, the delivery process on), each reset of the
same view, and prints for each: the client's whole time, the ``POST`` alone,
the raw baseline run just before it (the same lines written to a file with an
``fsync`` every 1,000), their ratio, and the phases the service stamped
(``queued``, ``resetting_sink``, ``replaying_snapshot``, requested to
complete). It ends with the medians. ``reset_status`` is polled every
``--poll`` seconds, as section c does (5 ms).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench import baselines
from bench.probes import Api, wait_lines
from bench.served import Server, service_env, wait_settled
from bench.served_small import phase_times
from bench.service import CONNECTOR, PIPELINE, VIEW, Service, change_bodies


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reset_probe",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=7, help="resets timed")
    parser.add_argument("--records", type=int, default=100_000, help="records in the view")
    parser.add_argument("--poll", type=float, default=0.005, help="seconds between two polls")
    parser.add_argument("--database-url", help="a PostgreSQL URL instead of a SQLite file")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="reset-probe-"))
    service = Service(workdir, args.database_url, name="probe", migrate=True)
    try:
        service.setup_pipeline()
        bodies = change_bodies(0, args.records, 1000)
        texts = baselines.canonical_texts(bodies)
        with Server("probe", workdir, service_env(service)) as server:
            wait_settled(service)
            assert service.api_key is not None
            api = Api(server.base, service.api_key)
            for body in bodies:
                api.push(PIPELINE, VIEW, body)
            wait_lines(service.sink_path, args.records, timeout=max(120.0, args.records / 1000))
            runs = [_one(api, workdir, texts, args.poll) for _ in range(args.runs)]
        totals, posts, ratios = zip(*runs, strict=True)
        print(
            f"median of {args.runs}: total {statistics.median(totals) * 1000:.1f} ms, "
            f"POST {statistics.median(posts) * 1000:.1f} ms, "
            f"ratio to the raw baseline {statistics.median(ratios):.2f}x (target >= 0.50x)"
        )
    finally:
        service.close()


def _one(api: Api, workdir: Path, texts: list[str], poll: float) -> tuple[float, float, float]:
    """One reset, timed; return its total and POST seconds and its ratio to the baseline."""
    raw = baselines.file_fsync_writes(workdir / "raw.jsonl", texts)
    started = time.perf_counter()
    token = api.request_reset(PIPELINE, VIEW, CONNECTOR)
    post = time.perf_counter() - started
    while True:
        body = api.reset_status(PIPELINE, token)
        if body["status"] != "inprogress":
            break
        time.sleep(poll)
    total = time.perf_counter() - started
    if body["status"] != "complete":
        raise RuntimeError(f"the reset ended {body['status']}: {body.get('error')}")
    print(
        f"total {total * 1000:.1f} ms, POST {post * 1000:.1f} ms, raw {raw * 1000:.1f} ms, "
        f"{raw / total:.2f}x | {phase_times(body)}",
        flush=True,
    )
    return total, post, raw / total


if __name__ == "__main__":
    main()
