"""A tiny run of the benchmarks, so that ``make bench`` cannot rot unnoticed."""

from __future__ import annotations

import json

from bench.run import main


def test_quick_bench_run_measures_every_section_it_can(tmp_path, capsys):
    results = tmp_path / "results.json"
    status = main(
        ["--quick", "--no-wrk", "--seconds", "0.1", "--records", "200", "--json", str(results)]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "| a | GET reset_status" in out
    data = json.loads(results.read_text())
    rows = {row["measure"]: row for row in data["rows"]}
    assert all(row["value"] > 0 for row in rows.values()), rows
    statements = rows["SQL statements per reset_status request"]["value"]
    # The hot path: credentials, pipeline and reset lookups, and not much more.
    assert 1 <= statements <= 3, out
    assert data["notes"]["c"] == "skipped (--no-wrk)"
    if "b" not in data["notes"]:
        assert any(m.startswith("reset: snapshot replay") for m in rows), rows
