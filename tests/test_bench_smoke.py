"""Tiny runs of the benchmarks, so that ``make bench`` and its options cannot rot unnoticed."""

from __future__ import annotations

import json
import os

import pytest

from bench import memory
from bench.run import main, shown_argument

POSTGRES_URL = os.environ.get("PIPELINE_MANAGER_TEST_POSTGRES_URL")


def run_bench(tmp_path, capsys, *argv: str) -> tuple[dict, str]:
    """Run ``python -m bench`` with ``argv``; return its JSON results and its output."""
    results = tmp_path / "results.json"
    status = main([*argv, "--json", str(results)])
    out = capsys.readouterr().out
    assert status == 0, out
    return json.loads(results.read_text()), out


def test_quick_bench_run_measures_every_section_it_can(tmp_path, capsys):
    data, out = run_bench(
        tmp_path,
        capsys,
        *("--quick", "--no-wrk", "--seconds", "0.1", "--records", "200"),
        *("--memory", "--memory-records", "300"),
    )
    assert "| a | GET reset_status" in out
    rows = {row["measure"]: row for row in data["rows"]}
    assert all(row["value"] > 0 for m, row in rows.items() if "change log" not in m), rows
    statements = rows["SQL statements per reset_status request"]["value"]
    # The hot path: credentials, pipeline and reset lookups, and not much more.
    assert 1 <= statements <= 3, out
    # Section c: the service under gunicorn (gunicorn.conf.py), wrk left out.
    assert "c" not in data["notes"], data["notes"]
    assert not any(m.startswith("gunicorn + wrk") for m in rows), rows
    assert rows["push -> line in the file sink, p50 (small database)"]["value"] > 0
    reset = rows["reset: POST .../reset -> reset_status complete, 200 records"]
    assert "sink checked: 200 lines" in reset["note"], reset
    assert "x the raw baseline's records/s" in reset["note"], reset
    assert rows["ingestion over gunicorn, 4 clients at once"]["value"] > 0
    # Section f: a Delta table always; PostgreSQL only with a sink database.
    table_rows = [m for m in rows if m.startswith("table sinks:")]
    assert any("delta sink" in m for m in table_rows), rows
    assert any("file sink" in m for m in table_rows), rows
    if "b" not in data["notes"]:
        assert any(m.startswith("reset: snapshot replay") for m in rows), rows
        raw = [m for m, row in rows.items() if row["section"] == "b" and "raw baseline" in m]
        assert len(raw) == 3, rows
        assert (
            "x the raw baseline's time" in rows["stream delivery to a file sink (worker)"]["note"]
        )
        log = rows["change log rows after 200 pushes, all delivered"]
        assert 0 <= log["value"] <= 200, log
    # Section h: the command line, each command a fresh process, beside two baselines.
    assert "h" not in data["notes"], data["notes"]
    assert "target <= 0.5 s" in rows["pipeline-manager --help"]["note"], rows
    assert "target <= 0.5 s" in rows["pipeline-manager api-keys list"]["note"], rows
    assert "d" not in data["notes"], data["notes"]
    memory = [m for m in rows if m.startswith("peak RSS")]
    assert memory == [
        "peak RSS, stream delivery, 300-record view",
        "peak RSS, snapshot replay, 300-record view",
    ], rows


def test_memory_rows_compare_each_size_with_the_smallest(monkeypatch, tmp_path):
    def measured(_workdir, _url, records):
        report = {"start_kb": 90_000, "peak_kb": 100_000 + records, "seconds": 1.0}
        return {"records": records, "build": 0.5, "delivery": report, "replay": report}

    monkeypatch.setattr(memory, "measure", measured)
    rows = {row.measure: row for row in memory.section_memory(tmp_path, None, [2000, 1000])}
    bigger = rows["peak RSS, snapshot replay, 2,000-record view"]
    assert bigger.value == 102_000 / 1024
    assert "1.01x the peak at 1,000 records" in bigger.note
    assert "the peak at" not in rows["peak RSS, stream delivery, 1,000-record view"].note


@pytest.mark.parametrize(
    "database_url",
    [
        pytest.param(None, id="sqlite"),
        pytest.param(
            POSTGRES_URL,
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(
                    not POSTGRES_URL, reason="needs PIPELINE_MANAGER_TEST_POSTGRES_URL"
                ),
            ],
            id="postgres",
        ),
    ],
)
def test_tiny_in_process_scale_run_builds_the_big_database_and_compares(
    tmp_path, capsys, database_url
):
    argv = ["--quick", "--scale", "--in-process", "--seconds", "0.1", "--scale-factor", "0.0005"]
    if database_url:
        argv += ["--database-url", database_url]
    data, out = run_bench(tmp_path, capsys, *argv)
    assert not data["notes"], data["notes"]
    rows = {row["measure"]: row for row in data["rows"]}
    build = rows["scale database built with bulk SQL"]
    assert "50 pipelines" in build["note"] and "500 resets" in build["note"], out
    assert "5,000 change-log rows" in build["note"], out
    assert "the small database's time" in rows["GET reset_status, scale database"]["note"]
    assert rows["ingestion, scale database (100/batch)"]["value"] > 0
    delivered = rows["stream delivery, scale database: 5,500 records (backlog and pushed)"]
    assert delivered["value"] > 0 and "sink checked" in delivered["note"]
    # The bulk backlog and the 500 pushed records, less whatever the worker compacted.
    assert 0 <= rows["change log rows, scale database, all delivered"]["value"] <= 5_500


@pytest.mark.slow
@pytest.mark.parametrize(
    "database_url",
    [
        pytest.param(None, id="sqlite"),
        pytest.param(
            POSTGRES_URL,
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(
                    not POSTGRES_URL, reason="needs PIPELINE_MANAGER_TEST_POSTGRES_URL"
                ),
            ],
            id="postgres",
        ),
    ],
)
def test_tiny_served_scale_run_measures_every_figure(tmp_path, capsys, database_url):
    argv = ["--quick", "--scale", "--no-wrk", "--scale-factor", "0.0005"]
    argv += ["--idle-seconds", "0.5", "--latency-pushes", "3", "--busy-views", "2"]
    argv += ["--delivery-processes", "1,2"]
    if database_url:
        argv += ["--database-url", database_url]
    data, out = run_bench(tmp_path, capsys, *argv)
    assert not data["notes"], data["notes"]
    rows = {row["measure"]: row for row in data["rows"]}
    assert "50 running pipelines" in rows["scale database built with bulk SQL"]["note"], out
    idle = rows["idle CPU, the whole service, 50 running connectors"]
    assert "delivery process x1" in idle["note"] and "request worker x" in idle["note"], idle
    assert rows["push -> line in the file sink, p99 (50 idle connectors beside it)"]["value"] > 0
    fair = [m for m in rows if m.startswith("fairness: tenant B's reset -> complete, 1 of")]
    assert fair and "(complete)" in rows[fair[0]]["note"], rows
    scrape = rows["GET /metrics, a tenant's scrape (read key of tenant default), 50 connectors"]
    assert "MB" in scrape["note"], scrape
    curve = [m for m in rows if m.startswith("delivery, 2 busy connectors")]
    assert len(curve) == (2 if database_url else 0), rows


@pytest.mark.parametrize(
    "argument",
    [
        "postgresql+psycopg://bench:s3cret@db:5432/x",
        "--database-url=postgresql://bench:s3cret@db/x",
    ],
)
def test_printed_command_hides_the_database_password(argument):
    assert "s3cret" not in shown_argument(argument)
    assert "bench:***@db" in shown_argument(argument)
