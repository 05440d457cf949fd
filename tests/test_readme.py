"""The README's walk-through, run as a newcomer would: twice, against a real gunicorn."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests import faults

README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough() -> str:
    """The shell block of the README's "Walk-through" section."""
    text = README.read_text()
    section = text[text.index("\n## Walk-through\n") :]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_walkthrough_runs_and_runs_again(tmp_path: Path) -> None:
    script = walkthrough()
    # The same lines, pointed at this test's server and instance.
    for line, value in {
        "F=.venv/bin/pipeline-manager": f"F={Path(sys.executable).parent / 'pipeline-manager'}",
        "SINK=instance/sinks/default/out/totals.jsonl": (
            f"SINK={tmp_path / 'sinks' / 'default' / 'out' / 'totals.jsonl'}"
        ),
    }.items():
        assert line in script, f"the walk-through no longer has {line!r}"
        script = script.replace(line, value)
    assert "B=http://127.0.0.1:5000" in script
    with faults.served(tmp_path, {}) as (base, env):
        script = script.replace("B=http://127.0.0.1:5000", f"B={base}")
        for attempt in (1, 2):
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, (attempt, done.stdout, done.stderr)
            out = done.stdout
            assert out.count('{"insert":') >= 2, out  # the sink's two lines
            assert '"status":"complete"' in out and '"replayed_records":2' in out, out
            assert "410 GONE" in out and '"error_code":"PipelineRestarted"' in out, out
