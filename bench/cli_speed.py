"""How soon the command line answers: ``pipeline-manager --help`` and ``api-keys list``.

Each command is a fresh process, timed from start to exit, against
``python -c pass`` in the same rounds (interleaved, so machine noise hits all
alike); the median of the rounds is shown, with the CPU time the process used.
A second baseline imports the libraries no database command can do without
(Flask and Flask-SQLAlchemy, with SQLAlchemy's ORM): on a busy machine it
alone can pass 0.5 s, so a command's distance from it is shown too.
The commands run on a migrated SQLite database of their own, with bytecode
cached as in an installed service: a warm-up run fills a cache folder of the
bench's own (``PYTHONPYCACHEPREFIX``), so the tree stays clean. The target is
0.5 s a command, the sink libraries (deltalake, pyarrow, psycopg) unloaded
(tests/test_cli_imports.py).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import Row

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.5
COMMAND = str(Path(sys.executable).with_name("pipeline-manager"))
FLOOR = "import flask_sqlalchemy (a database command's libraries)"
# Name -> argv; the first is the baseline the others are compared to.
TARGETS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    FLOOR: [sys.executable, "-c", "import flask_sqlalchemy"],
    "pipeline-manager --help": [COMMAND, "--help"],
    "pipeline-manager api-keys list": [COMMAND, "api-keys", "list"],
}


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command to its end; return its wall and CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(  # noqa: S603 (fixed argv, no shell)
        argv, cwd=ROOT, env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu


def section_cli_speed(rounds: int = 7) -> list[Row]:
    """Median seconds of each command against ``python -c pass``, ``rounds`` runs each."""
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        env.update(
            PYTHONPYCACHEPREFIX=str(Path(folder) / "pycache"),
            PIPELINE_MANAGER_SQLALCHEMY_DATABASE_URI=f"sqlite:///{Path(folder) / 'cli.db'}",
            PIPELINE_MANAGER_SECRET_KEY="bench-secret-key",  # noqa: S106 (a throwaway database's)
            PIPELINE_MANAGER_SINK_DIR=str(Path(folder) / "sinks"),
        )
        _run([COMMAND, "db", "upgrade"], env)  # also the warm-up: bytecode cached
        _run([COMMAND, "api-keys", "create", "bench"], env)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in TARGETS}
        for _ in range(rounds):
            for name, argv in TARGETS.items():
                samples[name].append(_run(argv, env))
    wall = {name: statistics.median(w for w, _ in runs) for name, runs in samples.items()}
    cpu = {name: statistics.median(c for _, c in runs) for name, runs in samples.items()}
    base_name = next(iter(TARGETS))
    base = wall[base_name]
    rows = [Row("h", base_name, base, "s", f"cpu {cpu[base_name]:.2f} s")]
    for name in list(TARGETS)[1:]:
        note = f"+{wall[name] - base:.2f} s over the baseline, cpu {cpu[name]:.2f} s"
        if name != FLOOR:
            met = "met" if wall[name] <= TARGET_SECONDS else "not met"
            note += f", {wall[name] - wall[FLOOR]:+.2f} s beside the libraries' import"
            note += f" (target <= {TARGET_SECONDS} s: {met})"
        rows.append(Row("h", name, wall[name], "s", note))
    return rows


if __name__ == "__main__":
    for row in section_cli_speed():
        print(f"{row.measure:<58} {row.value:6.3f} {row.unit}  {row.note}")
