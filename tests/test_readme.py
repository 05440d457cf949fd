"""The README's shell blocks, run against a served app.

The rule, for every shell block of README.md (```sh, ```bash, ```shell or ```console),
including the ones you add: the block is either

- run by a test of this file. Put a line that this block alone holds in ``RUN``,
  with the name of the test that runs it, and get the block in that test with
  ``block_with(that line)``. The test serves the app for real (``faults.served``:
  gunicorn on a free loopback port over a fresh SQLite file) and runs the block
  with ``bash -euo pipefail``, changing only what points at this machine (the
  venv's path, the port, the sink folder). Where a line cannot run as written (a
  server that runs until stopped, the test suite itself), the test stands in for
  it in plain sight and checks what it can; or
- marked as not run, with the reason, by an HTML comment on the line right before
  its opening fence:

      <!-- not run: needs root and a PostgreSQL server; .ci/run runs these -->

``test_every_shell_block_is_run_or_marked_not_run`` fails for a block that is
neither (or both), for a ``RUN`` line that no block or more than one holds, and
for a marker without a reason. Blocks in other languages (json, python, js) and
the unlabelled layout tree are not commands, and are not run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import requests
from flask import Flask

from tests import faults

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
VENV = BIN.parent
PIPELINE_MANAGER = str(BIN / "pipeline-manager")

SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "zsh"}
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")

# A line each run block alone holds -> the test that runs that block.
RUN = {
    "make run     #": "test_the_two_commands",
    "SINK=instance/sinks/default/out/totals.jsonl": "test_the_walkthrough_runs_and_runs_again",
    "api-keys revoke alice": "test_the_key_blocks_and_the_push_examples_run_on_a_fresh_server",
    "A read-only key for a dashboard": (
        "test_the_key_blocks_and_the_push_examples_run_on_a_fresh_server"
    ),
    '# -> 200 {"deletes"': "test_the_key_blocks_and_the_push_examples_run_on_a_fresh_server",
    "Idempotency-Key: $ID": "test_the_key_blocks_and_the_push_examples_run_on_a_fresh_server",
    "$F worker ": "test_the_command_line_listing_runs_on_a_served_app",
}


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, from 1
    language: str
    before: str  # the line right before the opening fence
    body: str


def code_blocks(text: str) -> list[Block]:
    """Every fenced code block of ``text``, in order."""
    found: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = "".join(line.removeprefix(indent) + "\n" for line in lines[i + 1 : end])
        found.append(Block(i + 1, language.lower(), lines[i - 1] if i else "", body))
        i = end + 1
    return found


def shell_blocks() -> list[Block]:
    return [b for b in code_blocks(README.read_text()) if b.language in SHELL_LANGUAGES]


def block_with(marker: str) -> str:
    """The one shell block that holds ``marker``, a line listed in ``RUN``."""
    assert marker in RUN, f"list {marker!r} in RUN, with the test that runs its block"
    (found,) = [block.body for block in shell_blocks() if marker in block.body]
    return found


def run_shell(script: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_every_shell_block_is_run_or_marked_not_run() -> None:
    blocks = shell_blocks()
    assert len(blocks) >= len(set(RUN.values())), "the README lost its shell blocks?"
    problems = []
    for marker, test in RUN.items():
        if not (test.startswith("test_") and callable(globals().get(test))):
            problems.append(f"RUN names {test!r}, not a test of {Path(__file__).name}")
        holders = [block.line for block in blocks if marker in block.body]
        if len(holders) != 1:
            problems.append(f"{marker!r} (RUN) is in {len(holders)} shell blocks: {holders}")
    for block in blocks:
        run = [marker for marker in RUN if marker in block.body]
        mark = NOT_RUN.match(block.before)
        where = f"README.md:{block.line}"
        if mark and not mark["reason"].strip():
            problems.append(f"{where}: 'not run' needs a reason")
        if run and mark:
            problems.append(f"{where}: marked not run, but {RUN[run[0]]} runs it")
        if not run and not mark:
            problems.append(
                f"{where}: a shell block no test runs; run it in tests/test_readme.py "
                "(and list it in RUN), or put <!-- not run: REASON --> right before it"
            )
    assert not problems, "\n".join(problems)


def test_what_the_not_run_blocks_leave_to_ci_is_run_by_ci() -> None:
    """The PostgreSQL commands are not run here (they need root): ``.ci/run`` runs them."""
    (block,) = [b for b in shell_blocks() if "make test-postgres" in b.body]
    assert NOT_RUN.match(block.before) and ".ci/run" in block.before
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("bash .ci/postgres.sh", "make test\n", "make test-postgres\n"):
        assert command in ci, command


def test_the_two_commands(tmp_path: Path) -> None:
    """``make run`` for real, on a free port and a fresh database; ``make test`` is this suite.

    ``make test`` would run this test again, so it is not run here; ``.ci/run`` runs it.
    """
    block = block_with("make run     #")
    assert [line.partition("#")[0].strip() for line in block.splitlines()] == [
        "make run",
        "make test",
    ]
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()
    port = faults.free_port()
    env = {
        **os.environ,
        "FLASK_RUN_PORT": str(port),
        "PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'run.db'}",
        "PIPELINE_MANAGER_SECRET_KEY": "readme-test-key",
        "PIPELINE_MANAGER_SINK_DIR": str(tmp_path / "sinks"),
    }
    log = (tmp_path / "make-run.log").open("w")
    # -o: the installation counts as up to date (tests/test_makefile.py tests that rule).
    make = ["make", "-o", f"{VENV}/.installed", f"VENV={VENV}", "run"]
    process = subprocess.Popen(
        make, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "make-run.log").read_text()
        try:
            return requests.get(f"{base}/readyz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        faults.wait_for(ready, timeout=60, what="make run to serve /readyz")
        body = requests.get(f"{base}/readyz", timeout=2).json()
        assert body["checks"] == {"database": "ok", "schema": "ok", "worker": "ok"}, body
        assert requests.get(f"{base}/v0/pipelines", timeout=2).status_code == 401
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # make and the server it started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_the_walkthrough_runs_and_runs_again(tmp_path: Path) -> None:
    script = block_with("SINK=instance/sinks/default/out/totals.jsonl")
    # The same lines, pointed at this test's server and instance.
    for line, value in {
        "F=.venv/bin/pipeline-manager": f"F={PIPELINE_MANAGER}",
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
            done = run_shell(script, env)
            assert done.returncode == 0, (attempt, done.stdout, done.stderr)
            out = done.stdout
            assert out.count('{"insert":') >= 2, out  # the sink's two lines
            assert '"status":"complete"' in out and '"replayed_records":2' in out, out
            assert "410 GONE" in out and '"error_code":"PipelineRestarted"' in out, out


def test_the_key_blocks_and_the_push_examples_run_on_a_fresh_server(tmp_path: Path) -> None:
    """The key commands, the walk-through with a key, the push and the retried push, in one shell.

    After the blocks, the test asks for the connector's stats: the retried push was stored once.
    """
    stats = "/v0/pipelines/orders/views/totals/connectors/sink1/stats"
    script = "\n".join(
        [
            block_with("api-keys revoke alice"),  # Getting a key
            block_with("A read-only key for a dashboard"),  # Walk-through with a key
            block_with('# -> 200 {"deletes"'),  # Pushing view changes
            block_with("Idempotency-Key: $ID"),  # Idempotent retries
            "echo; echo STATS",  # this test's own line
            f'curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:5000{stats}',
        ]
    )
    script = script.replace(".venv/bin/pipeline-manager", PIPELINE_MANAGER)
    assert "http://127.0.0.1:5000" in script
    with faults.served(tmp_path, {}) as (base, env):
        done = run_shell(script.replace("http://127.0.0.1:5000", base), env)
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    assert '"error_code":"InsufficientPermissions"' in out, out  # the dashboard key may not stop
    assert "HTTP/1.1 401" in out and 'Bearer realm="pipeline-manager"' in out, out
    answer = '{"deletes":1,"first_seq":1,"inserts":2,"last_seq":3,"log_end":3,"records":3}'
    assert answer in out, out  # the push example's answer, as the README shows it
    # The idempotent push, then its retry: the same answer, the second one marked replayed.
    lines = [line.strip() for line in out.split("STATS")[0].splitlines()]
    again = '{"deletes":0,"first_seq":4,"inserts":1,"last_seq":4,"log_end":4,"records":1}'
    tail = ["HTTP/1.1 200 OK", again, "HTTP/1.1 200 OK", "Idempotent-Replayed: true", again]
    assert lines[-6:-1] == tail, out
    assert json.loads(out.split("STATS")[1])["log_end"] == 4, out  # stored once


def test_the_command_line_listing_runs_on_a_served_app(tmp_path: Path) -> None:
    """The "Command line" block, on a fresh server whose background worker does the reset.

    ``changes.json`` is the reader's file: the test writes one. ``$F worker`` runs until
    stopped: the test starts it, stops it with SIGTERM as a service manager would once
    it says it runs, and wants exit status 0.
    """
    listing = block_with("$F worker ")
    (worker,) = [line for line in listing.splitlines() if line.startswith("$F worker ")]
    script = listing.replace("F=.venv/bin/pipeline-manager", f"F={PIPELINE_MANAGER}")
    script = script.replace(
        worker,
        "$F worker 2>worker.log & W=$!\n"
        "until grep -q 'worker running' worker.log; do sleep 0.1; done\n"
        "kill -TERM $W; wait $W",
    )
    (tmp_path / "changes.json").write_text('[{"insert": {"id": 3, "total": 7}}]')
    with faults.served(tmp_path, {"WORKER_POLL_INTERVAL": 0.1}) as (_base, env):
        done = run_shell(script, env, cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 0, (out, done.stderr)
    assert re.search(r"^orders\s", out, re.M), out  # pipelines list's table
    assert '"status": "complete"' in out or '"status":"complete"' in out, out  # resets wait
    assert '"openapi": "3.' in out, out  # openapi print
    sink = tmp_path / "sinks" / "default" / "out" / "totals.jsonl"
    assert faults.sink_lines(sink) == [{"insert": {"id": 3, "total": 7}}]


def test_the_command_line_listing_names_real_commands_and_options(app: Flask) -> None:
    """Each command, and each option, the listing names (comments too) is in the real help."""
    listing = block_with("$F worker ")
    assert listing.startswith("F=.venv/bin/pipeline-manager\n")
    top = subprocess.run(
        [PIPELINE_MANAGER, "--help"], capture_output=True, text=True, check=True
    ).stdout
    top_level = set(re.findall(r"^  ([a-z][a-z-]*) ", top.partition("Commands:")[2], re.M))
    ctx = click.Context(app.cli)

    def command(path: list[str]) -> click.Command:
        assert path[0] in top_level, f"{path[0]!r} is not in pipeline-manager --help"
        found: click.Command = app.cli
        for word in path:
            assert isinstance(found, click.Group), f"{path}: {found.name} has no sub-commands"
            found = found.get_command(ctx, word)
            assert found is not None, f"no command {' '.join(path)!r}"
        return found

    def path_at(text: str) -> list[str]:
        """The command path at the start of ``text``: words while they name commands."""
        path: list[str] = []
        for word in text.split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            here = command(path) if path else app.cli
            if not isinstance(here, click.Group) or here.get_command(ctx, word) is None:
                break
            path.append(word)
        return path

    def options(cmd: click.Command) -> set[str]:
        return {opt for param in cmd.params for opt in param.opts + param.secondary_opts}

    current: list[str] = []
    seen = set()
    for line in listing.splitlines()[1:]:
        code, _, comment = line.partition("#")
        if "$F " in code:
            current = path_at(code.split("$F ", 1)[1])
            assert current, line
        if also := re.search(r"\balso ([a-z, ]+)", comment):  # siblings of the command
            for word in re.findall(r"[a-z]+", also[1]):
                command([*current[:-1], word])
                seen.add(word)
        if other := re.search(r"\b(?:or|and): ([a-z].*)", comment):  # another command
            comment_path = path_at(other[1])
            for option in re.findall(r"--[a-z][a-z-]*", other[1]):
                assert option in options(command(comment_path)), (line, option)
            comment = comment.replace(other[1], "")
            seen.add(" ".join(comment_path))
        for option in re.findall(r"--[a-z][a-z-]*", code + comment):
            assert option in options(command(current)), (line, option)
        seen.add(" ".join(current))
    # The listing's own commands, spelled out: a change to it shows up here.
    assert {"worker", "openapi print", "openapi write", "connectors start", "restart"} <= seen
