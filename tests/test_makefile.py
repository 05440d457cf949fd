"""The Makefile's short targets: `make test` and friends install only when needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _dry_run(venv: Path, target: str) -> str:
    """What ``make TARGET`` would run with ``venv`` as the virtual environment."""
    return subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_test_run_and_serve_reinstall_only_when_the_metadata_changed(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    stamp = venv / ".installed"
    stamp.write_text("")
    for target in ("test", "run", "serve"):
        assert "pip install" not in _dry_run(venv, target), target
    # Installed before pyproject.toml last changed: install again first.
    os.utime(stamp, (0, 0))
    assert "pip install --quiet -e '.[dev]'" in _dry_run(venv, "test")
