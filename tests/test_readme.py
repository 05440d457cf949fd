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


def blocks() -> list[str]:
    """Every shell block of the README, in order."""
    return re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)


def block_with(marker: str) -> str:
    """The one shell block that holds ``marker``."""
    (found,) = [block for block in blocks() if marker in block]
    return found


def test_the_key_blocks_and_the_push_example_run_on_a_fresh_server(tmp_path: Path) -> None:
    """The key commands, the walk-through with a key, then the push example, in one shell."""
    script = "\n".join(
        [
            block_with("api-keys revoke alice"),  # Getting a key
            block_with("A read-only key for a dashboard"),  # Walk-through with a key
            block_with('# -> 200 {"deletes"'),  # Pushing view changes
        ]
    )
    script = script.replace(
        ".venv/bin/pipeline-manager", str(Path(sys.executable).parent / "pipeline-manager")
    )
    assert "http://127.0.0.1:5000" in script
    with faults.served(tmp_path, {}) as (base, env):
        script = script.replace("http://127.0.0.1:5000", base)
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    assert '"error_code":"InsufficientPermissions"' in out, out  # the dashboard key may not stop
    assert "HTTP/1.1 401" in out and 'Bearer realm="pipeline-manager"' in out, out
    answer = '{"deletes":1,"first_seq":1,"inserts":2,"last_seq":3,"log_end":3,"records":3}'
    assert answer in out, out  # the push example's answer, as the README shows it
