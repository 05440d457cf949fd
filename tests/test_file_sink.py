"""The file transport: sink paths and the reset that empties the sink file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import Api, assert_error

CONNECTORS = "/v0/pipelines/orders/views/totals/connectors"


@pytest.fixture
def sinks(app: Flask) -> Path:
    """The default tenant's sink directory, created."""
    folder = Path(app.config["SINK_DIR"]) / "default"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def orders(api: Api) -> Api:
    """A stopped pipeline 'orders' with view 'totals' and no connector."""
    api.create_pipeline()
    return api


def add(api: Api, path: str, name: str = "sink1") -> Any:
    """POST a file connector with that path."""
    return api.client.post(
        CONNECTORS, json={"name": name, "transport": {"name": "file", "config": {"path": path}}}
    )


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """One attempt per reset: the first failure is final (retries are tested elsewhere)."""
    return {**app_config, "RESET_MAX_ATTEMPTS": 1, "RESET_RETRY_SECONDS": 0}


def reset_and_run(api: Api, run_resets: Any) -> dict[str, Any]:
    """Start the pipeline, reset sink1, run the executor; return the final status."""
    api.action("orders", "start")
    token = api.reset()
    assert run_resets() == 1
    r = api.status(token)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_reset_replaces_the_sink_file_atomically_with_an_empty_one(
    orders: Api, sinks: Path, run_resets: Any
) -> None:
    orders.add_file_connector(path="out/totals.jsonl")
    target = sinks / "out" / "totals.jsonl"
    target.parent.mkdir()
    target.write_text('{"insert": {"id": 1}}\n{"insert": {"id": 2}}\n')
    old_inode = target.stat().st_ino
    # A reader holding the old file keeps reading the old content, whole.
    with open(target) as reader:
        body = reset_and_run(orders, run_resets)
        assert reader.read().count("\n") == 2
    assert (body["status"], body["phase"], body["error"]) == ("complete", "done", None)
    assert target.read_bytes() == b""
    assert target.stat().st_ino != old_inode
    assert sorted(p.name for p in target.parent.iterdir()) == ["totals.jsonl"]  # no temp left


def test_reset_creates_a_missing_sink_file_under_the_sink_dir(
    orders: Api, sinks: Path, run_resets: Any
) -> None:
    orders.add_file_connector(path="deep/er/totals.jsonl")
    assert reset_and_run(orders, run_resets)["status"] == "complete"
    assert (sinks / "deep" / "er" / "totals.jsonl").read_bytes() == b""


def test_absolute_path_inside_the_sink_dir_is_accepted(
    orders: Api, sinks: Path, run_resets: Any
) -> None:
    target = sinks / "abs.jsonl"
    assert add(orders, str(target)).status_code == 201
    target.write_text("old\n")
    assert reset_and_run(orders, run_resets)["status"] == "complete"
    assert target.read_bytes() == b""


def test_symlink_inside_the_sink_dir_is_followed(orders: Api, sinks: Path, run_resets: Any) -> None:
    (sinks / "real").mkdir()
    (sinks / "alias").symlink_to(sinks / "real")
    assert add(orders, "alias/t.jsonl").status_code == 201
    assert reset_and_run(orders, run_resets)["status"] == "complete"
    assert (sinks / "real" / "t.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    "path",
    [
        "../escape.jsonl",
        "out/../../escape.jsonl",
        "/etc/passwd",
        "/tmp/elsewhere.jsonl",
        "",
        ".",
        "out/..",
        "nul\x00byte",
        "x" * 5000,
        "a/" * 3000 + "f",
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute-system",
        "absolute-elsewhere",
        "empty",
        "the-dir-itself",
        "the-dir-again",
        "nul",
        "name-too-long",
        "path-too-long",
    ],
)
def test_path_escaping_or_unusable_is_400(orders: Api, sinks: Path, path: str) -> None:
    response = add(orders, path)
    body = assert_error(response, 400, "InvalidRequest")
    assert "transport.config.path" in body["details"]
    assert str(sinks.parent) not in response.get_data(as_text=True)  # no server layout
    assert orders.client.get(CONNECTORS).get_json() == []


def test_symlink_out_of_the_sink_dir_is_400(orders: Api, sinks: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sinks / "link").symlink_to(outside)
    (sinks / "file-link.jsonl").symlink_to(outside / "victim.jsonl")
    for path in ("link/t.jsonl", "file-link.jsonl"):
        assert_error(add(orders, path), 400, "InvalidRequest")


def test_path_naming_a_folder_is_400(orders: Api, sinks: Path) -> None:
    (sinks / "folder").mkdir()
    body = assert_error(add(orders, "folder"), 400, "InvalidRequest")
    assert "transport.config.path" in body["details"]


def test_symlink_planted_after_creation_fails_the_reset_and_spares_the_target(
    orders: Api, sinks: Path, tmp_path: Path, run_resets: Any
) -> None:
    orders.add_file_connector(path="later.jsonl")
    victim = tmp_path / "victim.jsonl"
    victim.write_text("precious\n")
    (sinks / "later.jsonl").symlink_to(victim)
    body = reset_and_run(orders, run_resets)
    assert body["status"] == "failed"
    assert "sink directory" in body["error"]
    assert str(sinks.parent) not in body["error"]
    assert victim.read_text() == "precious\n"


def test_transport_failure_makes_the_reset_failed_with_a_readable_error(
    orders: Api, sinks: Path, run_resets: Any
) -> None:
    (sinks / "blocker").write_text("a file where a folder should be\n")
    orders.add_file_connector(path="blocker/out.jsonl")
    body = reset_and_run(orders, run_resets)
    assert body["status"] == "failed"
    assert body["phase"] != "done"
    assert body["completed_at"] is not None
    assert body["error"].startswith("Cannot reset sink file")
    assert "'blocker/out.jsonl'" in body["error"]
    assert str(sinks) not in body["error"]  # no server layout in answers
    assert "Traceback" not in body["error"] and "Errno" not in body["error"]
    assert (sinks / "blocker").read_text() == "a file where a folder should be\n"


def test_unwritable_sink_folder_makes_the_reset_failed(
    orders: Api, sinks: Path, run_resets: Any
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = sinks / "locked"
    locked.mkdir()
    orders.add_file_connector(path="locked/out.jsonl")
    locked.chmod(0o500)
    try:
        body = reset_and_run(orders, run_resets)
    finally:
        locked.chmod(0o700)
    assert body["status"] == "failed"
    assert "Permission denied" in body["error"]
