"""The README and the guides in docs/, run the way a reader runs them.

``test_the_docs_run_in_order_in_one_shell`` copies the project (its files, no
``instance/``; the copy's ``.venv`` is a link to this one), serves the copy with
``make serve PORT=...`` (gunicorn, ``gunicorn.conf.py``, a fresh SQLite file in
the copy's ``instance/``), and runs every shell block (```sh, ```bash, ```shell,
```console) of README.md, then of each guide in the order the README lists
them, in ONE bash shell in the copy, the README's walk-through twice in a row.
The shell starts without the venv on its ``PATH`` (the README's
``source .venv/bin/activate`` puts it there) and with ``PORT`` set to the
served port, as the README tells a reader who serves on another port. The rules
for every shell block, including the ones you add:

- it is run, unless an HTML comment on the line right before its opening fence
  says why not: ``<!-- not run: REASON -->``;
- it must succeed (``bash -euo pipefail``) and print no traceback;
- a ```text block that comes next after it (no heading in between) is what it
  prints, stdout and stderr as a terminal shows them: every line, in order;
  ``...`` in a line stands for any text, a line of ``...`` alone for any lines;
- a line that cannot run as written (a worker that runs until stopped) has a
  stand-in in ``STAND_INS``, swapped in by the test in plain sight.

The other tests check what keeps the docs honest: every block is run or says
why not, every guide is listed in the README and every link leads to a file and
heading that exist, the README's two commands work on a fresh copy
(``make run``), ``make`` alone lists the targets, the docs spell the command
one way, every ``pipeline-manager`` command and option they name exists, and
the README's layout tree names every module of ``app/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import requests
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo

from tests import faults

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
VENV = BIN.parent

SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "zsh"}
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
# A line the README's walk-through alone holds: the test runs that block twice.
WALKTHROUGH = "SINK=instance/sinks/default/out/totals.jsonl"
# What the walk-through's `cat $SINK` prints, after the delivery and after the reset.
SINK_LINES = ['{"insert":{"id":1,"total":10}}', '{"insert":{"id":2,"total":5}}']
# A line (its command, comment left out) that cannot run as written -> (why, what runs instead).
STAND_INS = {
    "pipeline-manager worker": (
        "it runs until stopped: the test starts it, stops it with SIGTERM as a service "
        "manager would once it says it runs, and wants exit status 0",
        'L=$(mktemp); pipeline-manager worker 2>"$L" & W=$!\n'
        'until grep -q "worker running" "$L"; do sleep 0.1; done\n'
        'kill -TERM $W; wait $W; rm -f "$L"',
    ),
}
MARK = "@@docs-block@@"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, from 1
    language: str
    before: str  # the line right before the opening fence
    body: str
    output: str | None = None  # the ```text block that shows what it prints

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def not_run(self) -> re.Match | None:
        return NOT_RUN.match(self.before)


def code_blocks(path: Path) -> list[Block]:
    """Every fenced code block of ``path``, in order, each shell block with its shown output."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    headings_after: list[int] = []  # for each block, the line of the first heading after it
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
        found.append(Block(path, i + 1, language.lower(), lines[i - 1] if i else "", body))
        next_heading = next((j for j in range(end, len(lines)) if lines[j].startswith("#")), None)
        headings_after.append(len(lines) if next_heading is None else next_heading)
        i = end + 1
    blocks = []
    for n, block in enumerate(found):
        after = found[n + 1] if n + 1 < len(found) else None
        if (
            block.language in SHELL_LANGUAGES
            and after is not None
            and after.language == "text"
            and after.line - 1 < headings_after[n]
        ):
            block = Block(**{**block.__dict__, "output": after.body})
        blocks.append(block)
    return blocks


def guides() -> list[Path]:
    """The guides in docs/, in the order the README's "Where to go next" lists them."""
    section = README.read_text().partition("\n## Where to go next\n")[2].partition("\n## ")[0]
    listed = re.findall(r"\]\((docs/[a-z-]+\.md)\)", section)
    return [ROOT / path for path in dict.fromkeys(listed)]


def documents() -> list[Path]:
    return [README, *guides()]


def shell_blocks(paths: list[Path] | None = None) -> list[Block]:
    return [
        block
        for path in (documents() if paths is None else paths)
        for block in code_blocks(path)
        if block.language in SHELL_LANGUAGES
    ]


def with_stand_ins(body: str) -> str:
    """``body`` with each line that cannot run as written replaced by its stand-in."""
    out = []
    for line in body.splitlines():
        stand_in = STAND_INS.get(line.partition("#")[0].strip())
        out.append(stand_in[1] if stand_in else line)
    return "\n".join(out) + "\n"


def output_pattern(shown: str) -> re.Pattern:
    """A shown output as a pattern: ``...`` is any text, a line of ``...`` any lines."""
    parts = []
    for line in shown.splitlines():
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def printed(text: str) -> str:
    """What a block printed, line by line, without trailing blanks."""
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


# --- The copy of the project, and serving it -------------------------------------------


def project_copy(where: Path) -> Path:
    """The project's files (tracked, and untracked but not ignored) in ``where``; no instance/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    copy = where / "project"
    for name in filter(None, listed):
        source = ROOT / name
        if name.startswith("instance/") or not source.is_file():
            continue  # the instance folder is the deployment's; a file deleted in the tree
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy / name)
    # Installing again would take minutes and the network: the copy uses this venv.
    (copy / ".venv").symlink_to(VENV, target_is_directory=True)
    return copy


def reader_env(copy: Path, port: int) -> dict[str, str]:
    """A reader's shell: no settings of ours, no venv on PATH yet, the copy's code, PORT set."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIPELINE_MANAGER_", "FLASK_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PORT", "PROMETHEUS_MULTIPROC_DIR")
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != BIN.resolve()
    )
    # The copy's own code, as a venv installed in the copy would import it (this venv's
    # editable install points at this tree).
    env["PYTHONPATH"] = str(copy)
    env["PORT"] = str(port)
    return env


@contextmanager
def make_serving(copy: Path, target: str, port: int, log: Path) -> Iterator[str]:
    """``make TARGET PORT=port`` in the copy until the block ends; yields the base URL.

    ``-o .venv/.installed``: the installation counts as up to date
    (tests/test_makefile.py tests that rule). Waits for /readyz to answer 200.
    """
    env = {**reader_env(copy, port), "PIPELINE_MANAGER_WORKERS": "2"}
    with log.open("w") as out:
        process = subprocess.Popen(
            ["make", "-o", ".venv/.installed", target, f"PORT={port}"],
            cwd=copy, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return requests.get(f"{base}/readyz", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False

    try:
        faults.wait_for(ready, timeout=90, what=f"make {target} to serve /readyz")
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # make and the server it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- The tests --------------------------------------------------------------------------


def test_every_shell_block_is_run_or_marked_not_run() -> None:
    blocks = shell_blocks()
    problems = []
    run = [block for block in blocks if not block.not_run]
    walkthroughs = [block.where for block in blocks if WALKTHROUGH in block.body]
    if len(walkthroughs) != 1 or not walkthroughs[0].startswith("README.md:"):
        problems.append(f"the walk-through's line {WALKTHROUGH!r} is in {walkthroughs}")
    for block in blocks:
        if block.not_run and not block.not_run["reason"].strip():
            problems.append(f"{block.where}: 'not run' needs a reason")
        if block.not_run and block.output is not None:
            problems.append(f"{block.where}: marked not run, yet shows its output")
    for command in STAND_INS:
        holders = [
            block.where
            for block in run
            for line in block.body.splitlines()
            if line.partition("#")[0].strip() == command
        ]
        if len(holders) != 1:
            problems.append(f"the stand-in for {command!r} fits {len(holders)} lines: {holders}")
    for path in documents():
        texts = [b for b in code_blocks(path) if b.language == "text"]
        shown = {b.output for b in code_blocks(path) if b.output is not None}
        for block in texts:
            if block.body not in shown and NOT_RUN.search(block.body) is None:
                problems.append(f"{block.where}: a text block that follows no run shell block")
    assert len(run) >= 10, "the docs lost their shell blocks?"
    assert not problems, "\n".join(problems)


def test_every_guide_is_listed_and_every_link_leads_somewhere() -> None:
    assert sorted(guides()) == sorted(DOCS.glob("*.md")), "list every docs/*.md in the README"
    problems = []
    for path in documents():
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links outside code
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http://, mailto: ...
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                problems.append(f"{path.name}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{path.name}: {target}: no such heading in {linked.name}")
    assert not problems, "\n".join(problems)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings
    }


def test_the_docs_run_in_order_in_one_shell(tmp_path: Path) -> None:
    """Every run block of the README and the guides, in order, in one shell; see the module doc."""
    copy = project_copy(tmp_path)
    port = faults.free_port()
    readme = [b for b in shell_blocks([README]) if not b.not_run]
    (walkthrough,) = [b for b in readme if WALKTHROUGH in b.body]
    order: list[Block] = []
    for block in readme:
        order += [block, block] if block is walkthrough else [block]  # the walk-through twice
    order += [b for b in shell_blocks(guides()) if not b.not_run]
    script = "".join(f"echo '{MARK}{n}'\n{with_stand_ins(b.body)}" for n, b in enumerate(order))
    (tmp_path / "docs.sh").write_text(script)  # kept for a failure's post-mortem
    with make_serving(copy, "serve", port, tmp_path / "make-serve.log"):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script + "echo; echo done"],
            cwd=copy, env=reader_env(copy, port), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=480,
        )  # fmt: skip
    out = done.stdout
    segments = dict(re.findall(rf"^{MARK}(\d+)\n(.*?)(?=^{MARK}|\Z)", out, re.M | re.S))
    last = max(map(int, segments), default=0)
    assert done.returncode == 0 and out.endswith("\ndone\n"), (
        f"{order[last].where} failed (exit {done.returncode}):\n{order[last].body}\n"
        f"--- it printed:\n{segments.get(str(last), out)}"
    )
    assert "Traceback (most recent call last)" not in out, out
    assert len(segments) == len(order), out
    problems = []
    for n, block in enumerate(order):
        got = printed(segments[str(n)])
        if n == len(order) - 1:
            got = got.removesuffix("\ndone\n")
        if block.output is not None and not output_pattern(block.output).fullmatch(got):
            problems.append(
                f"{block.where} (run {n}) printed:\n{got}--- where the text shows:\n{block.output}"
            )
    assert not problems, "\n".join(problems)
    # The walk-through, twice: each run's sink held the two changes, then the replayed two.
    runs = [segments[str(n)] for n, block in enumerate(order) if block is walkthrough]
    assert len(runs) == 2
    for run in runs:
        assert [line for line in run.splitlines() if line.startswith('{"insert"')] == SINK_LINES * 2
        assert "No such file" not in run, run


def test_the_two_commands(tmp_path: Path) -> None:
    """``make run`` on a fresh copy serves, worker included; ``make test`` is what CI runs.

    ``make test`` would run this test again, so it is not run here; ``.ci/run`` runs it.
    """
    (block,) = [b for b in shell_blocks([README]) if b.body.startswith("make run ")]
    assert [line.partition("#")[0].strip() for line in block.body.splitlines()] == [
        "make run",
        "make test",
    ]
    assert block.not_run and "make run" in block.not_run["reason"]
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()
    copy = project_copy(tmp_path)
    port = faults.free_port()
    with make_serving(copy, "run", port, tmp_path / "make-run.log") as base:
        body = requests.get(f"{base}/readyz", timeout=2).json()
        assert body["checks"] == {"database": "ok", "schema": "ok", "worker": "ok"}, body
        assert requests.get(f"{base}/v0/pipelines", timeout=2).status_code == 401
    assert (copy / "instance" / "pipeline-manager.db").exists()  # the default, in instance/


def test_make_alone_lists_every_target_the_docs_name() -> None:
    listing = subprocess.run(
        ["make", "-s", "-C", str(ROOT)], capture_output=True, text=True, check=True
    ).stdout
    listed = set(re.findall(r"^  ([a-z][a-z-]*) ", listing, re.M))
    makefile = (ROOT / "Makefile").read_text()
    with_help = set(re.findall(r"^([a-z][a-z-]*):[^#\n]*## ", makefile, re.M))
    assert listed == with_help, listing
    for target in ("help", "install", "run", "serve", "shell", "test", "test-quick", "lint"):
        assert target in listed, target
    named = set()
    for path in documents():
        named |= set(re.findall(r"\bmake ([a-z][a-z-]*)", code_in(path)))
    assert named <= listed, named - listed


def test_the_docs_spell_the_command_one_way() -> None:
    """``pipeline-manager``: never a path to it, nor Flask's name; ``flask --app wsgi`` once."""
    texts = {path.name: path.read_text() for path in documents()}
    problems = []
    for name, text in texts.items():
        for wrong in re.findall(r"\S*/bin/pipeline-manager|\bflask (?!--app)[a-z-]+", text):
            problems.append(f"{name}: {wrong!r}")
    assert not problems, "\n".join(problems)
    assert sum(text.count("flask --app wsgi") for text in texts.values()) == 1


def test_the_commands_and_options_the_docs_name_exist(app: Flask) -> None:
    """Each ``pipeline-manager`` command the docs name, and each of its options, is real."""
    group = FlaskGroup(name="pipeline-manager", create_app=lambda: app)
    ctx = click.Context(group, obj=ScriptInfo(create_app=lambda: app))

    def sub(command: click.Command, word: str) -> click.Command | None:
        return command.get_command(ctx, word) if isinstance(command, click.Group) else None

    def options(command: click.Command) -> set[str]:
        return {opt for param in command.params for opt in param.opts + param.secondary_opts}

    seen = set()
    problems = []
    for path in documents():
        for mention in re.findall(r"pipeline-manager((?: +[^\s`|;)&]+)+)", code_in(path)):
            command: click.Command = group
            words = mention.split()
            path_words = []
            for word in words:
                found = sub(command, word) if re.fullmatch(r"[a-z][a-z-]*", word) else None
                if found is None:
                    break
                command, path_words = found, [*path_words, word]
            if not path_words and words[0] != "--help":
                problems.append(f"{path.name}: 'pipeline-manager{mention}' names no command")
                continue
            seen.add(" ".join(path_words))
            for option in re.findall(r"(?<!\S)--[a-z][a-z-]*", mention):
                if option not in options(command) and option != "--help":
                    problems.append(f"{path.name}: {' '.join(path_words)} has no {option}")
    assert not problems, "\n".join(problems)
    assert {"worker", "resets wait", "connectors add", "api-keys create", "db upgrade"} <= seen


def code_in(path: Path) -> str:
    """The code of a doc: its shell blocks' commands (comments left out) and its inline code."""
    commands = [
        line.partition(" #")[0]
        for block in code_blocks(path)
        if block.language in SHELL_LANGUAGES
        for line in block.body.splitlines()
    ]
    prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return "\n".join(commands + re.findall(r"`([^`\n]+)`", prose))


def test_the_layout_tree_names_every_module_of_app() -> None:
    """The README's tree: each module of app/ on its line (a package's modules on its entry).

    A package inside a package (``transports/http/``) is named on its parent's
    entry as ``http/``, with its modules.
    """
    (tree,) = [b.body for b in code_blocks(README) if b.language == "" and "app/" in b.body]
    entries: dict[str, str] = {}
    name = ""
    for line in tree.splitlines():
        if match := re.match(r"^  (\S+)", line):
            name = match[1]
            entries[name] = line
        elif name and line.startswith("   "):
            entries[name] += " " + line  # the entry's next line
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "app"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    missing = []
    for file in listed:
        parts = Path(file).parts
        if not file.endswith(".py") or not (ROOT / file).exists() or "migrations" in parts:
            continue
        if len(parts) == 2:
            if parts[1] not in entries:
                missing.append(file)
        elif len(parts) == 3 and parts[2] != "__init__.py":
            entry = entries.get(parts[1] + "/", "")
            if not re.search(rf"\b{re.escape(Path(parts[2]).stem)}\b", entry):
                missing.append(file)
        elif len(parts) == 4:  # a package's own package: "http/ (... attempt, ...)"
            entry = entries.get(parts[1] + "/", "")
            stem = Path(parts[3]).stem
            named = stem == "__init__" or re.search(rf"\b{re.escape(stem)}\b", entry)
            if f"{parts[2]}/" not in entry or not named:
                missing.append(file)
    assert not missing, f"the README's layout tree leaves out {missing}"
    gone = [name for name in entries if not (ROOT / "app" / name).exists()]
    assert not gone, f"the README's layout tree names {gone}, which app/ no longer has"


def test_the_layout_tree_names_every_top_level_entry() -> None:
    """The tree's unindented lines: every file and folder at the top of the project."""
    (tree,) = [b.body for b in code_blocks(README) if b.language == "" and "app/" in b.body]
    drawn = {line.split()[0] for line in tree.splitlines() if line and not line[0].isspace()}
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    top = {name.split("/")[0] + ("/" if "/" in name else "") for name in tracked}
    assert top - {"README.md", ".gitignore"} == drawn


def test_what_the_not_run_blocks_leave_to_ci_is_run_by_ci() -> None:
    """The PostgreSQL commands are not run here (they need root): ``.ci/run`` runs them."""
    (block,) = [b for b in shell_blocks() if "make test-postgres" in b.body]
    assert block.not_run and ".ci/run" in block.not_run["reason"]
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("bash .ci/postgres.sh", "make test\n", "make test-postgres\n"):
        assert command in ci, command
