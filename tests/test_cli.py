"""The ``flask`` command line: pipelines, connectors and resets, through Flask's CliRunner."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask

from app.delivery.worker import DeliveryWorker
from app.extensions import db

ERROR_LINE = re.compile(r"^Error: .+ \((?P<code>[A-Za-z]+)\)$")


@pytest.fixture
def cli(app: Flask):
    """Run ``flask ARGS...`` against the test app; return click's result."""
    runner = app.test_cli_runner()

    def run(*args: str) -> Result:
        return runner.invoke(args=list(args))

    return run


def ok(result: Result) -> str:
    """Check a command succeeded without a word on stderr; return its stdout."""
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stderr == ""
    return result.stdout


def ok_json(result: Result) -> Any:
    """Check a command succeeded; return its stdout parsed as JSON."""
    return json.loads(ok(result))


def cli_error(result: Result, error_code: str) -> dict:
    """Check a command failed with the contract's error on stderr; return its details."""
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    # Exit 1 through SystemExit, not an exception that escaped (which also exits 1).
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    first, *rest = result.stderr.splitlines()
    match = ERROR_LINE.match(first)
    assert match, result.stderr
    assert match["code"] == error_code, result.stderr
    assert len(rest) <= 1
    details = json.loads(rest[0]) if rest else {}
    assert isinstance(details, dict)
    return details


@pytest.fixture
def stopped(cli) -> None:
    """A stopped pipeline 'orders' with view 'totals' and file connector 'sink1'."""
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    ok(
        cli(
            "connectors", "add", "orders", "totals", "sink1",
            "--transport", "file", "--path", "out/totals.jsonl",
        )
    )  # fmt: skip


@pytest.fixture
def running(cli, stopped) -> None:
    """The same pipeline, started."""
    ok(cli("pipelines", "start", "orders"))


def issue(cli, *extra: str) -> str:
    """Issue a reset of orders/totals/sink1; return the token."""
    out = ok(cli("resets", "issue", "orders", "totals", "sink1", *extra))
    return out.strip()


# -- pipelines ------------------------------------------------------------------


def test_create_with_json_prints_the_api_shape(cli):
    body = ok_json(
        cli(
            "pipelines", "create", "orders", "--view", "totals", "--view", "hist",
            "--description", "Order totals", "--json",
        )
    )  # fmt: skip
    assert body["name"] == "orders" and body["tenant"] == "default"
    assert body["views"] == ["totals", "hist"]
    assert body["status"] == "stopped" and body["incarnation"] == 0
    assert body["description"] == "Order totals"
    assert {"id", "created_at", "status_since"} <= set(body)


def test_create_without_json_prints_a_line(cli):
    out = ok(cli("pipelines", "create", "orders", "--view", "totals"))
    assert out == "Created pipeline 'orders' (views: totals)\n"


def test_show_json_equals_the_api_body(cli, client):
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    shown = ok_json(cli("pipelines", "show", "orders", "--json"))
    assert shown == client.get("/v0/pipelines/orders").get_json()


def test_show_text_lists_the_fields(cli):
    ok(cli("pipelines", "create", "orders", "--view", "totals", "--view", "hist"))
    out = ok(cli("pipelines", "show", "orders"))
    assert re.search(r"^name: +orders$", out, re.M)
    assert re.search(r"^status: +stopped$", out, re.M)
    assert re.search(r"^views: +totals, hist$", out, re.M)


def test_list_prints_a_table_and_json(cli):
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    ok(cli("pipelines", "create", "clicks"))
    lines = ok(cli("pipelines", "list")).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "INCARNATION", "VIEWS", "STATUS_SINCE"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["clicks", "stopped", "0"],
        ["orders", "stopped", "0"],
    ]
    listed = ok_json(cli("pipelines", "list", "--json"))
    assert [p["name"] for p in listed] == ["clicks", "orders"]


def test_list_of_no_pipelines_prints_only_the_header(cli):
    assert ok(cli("pipelines", "list")).split() == [
        "NAME", "STATUS", "INCARNATION", "VIEWS", "STATUS_SINCE",
    ]  # fmt: skip
    assert ok_json(cli("pipelines", "list", "--json")) == []


def test_lifecycle_start_bumps_incarnation_pause_resume_keep_it(cli):
    ok(cli("pipelines", "create", "orders"))
    steps = [
        ("start", "running", 1),
        ("pause", "paused", 1),
        ("resume", "running", 1),
        ("restart", "running", 2),
        ("stop", "stopped", 2),
        ("start", "running", 3),
        ("pause", "paused", 3),
        ("restart", "running", 4),
    ]
    for action, status, incarnation in steps:
        body = ok_json(cli("pipelines", action, "orders", "--json"))
        assert (action, body["status"], body["incarnation"]) == (action, status, incarnation)


def test_restart_of_a_stopped_pipeline_starts_it(cli):
    ok(cli("pipelines", "create", "orders"))
    out = ok(cli("pipelines", "restart", "orders"))
    assert out == "Pipeline 'orders' restarted; it is running (incarnation 1)\n"


def test_delete_removes_a_stopped_pipeline(cli):
    ok(cli("pipelines", "create", "orders"))
    assert ok(cli("pipelines", "delete", "orders")) == "Deleted pipeline 'orders'\n"
    cli_error(cli("pipelines", "show", "orders"), "UnknownPipelineName")


def test_tenants_are_isolated(cli, client):
    ok(cli("pipelines", "create", "orders", "--view", "a_view", "--tenant", "acme"))
    ok(cli("pipelines", "create", "orders", "--view", "b_view", "--tenant", "globex"))
    a = ok_json(cli("pipelines", "show", "orders", "--tenant", "acme", "--json"))
    b = ok_json(cli("pipelines", "show", "orders", "--tenant", "globex", "--json"))
    assert (a["views"], a["tenant"]) == (["a_view"], "acme")
    assert (b["views"], b["tenant"]) == (["b_view"], "globex")
    assert a["id"] != b["id"]

    ok(cli("pipelines", "start", "orders", "--tenant", "acme"))
    b = ok_json(cli("pipelines", "show", "orders", "--tenant", "globex", "--json"))
    assert (b["status"], b["incarnation"]) == ("stopped", 0)

    # The default tenant (the API's, for now) sees neither.
    assert ok_json(cli("pipelines", "list", "--json")) == []
    assert client.get("/v0/pipelines/orders").status_code == 404
    cli_error(cli("pipelines", "show", "orders"), "UnknownPipelineName")

    ok(cli("pipelines", "delete", "orders", "--tenant", "globex"))
    left = ok_json(cli("pipelines", "list", "--tenant", "acme", "--json"))
    assert [(p["name"], p["tenant"]) for p in left] == [("orders", "acme")]
    assert ok_json(cli("pipelines", "list", "--tenant", "globex", "--json")) == []


# -- connectors -----------------------------------------------------------------


def test_add_file_connector_and_show_it(cli, stopped, client):
    shown = ok_json(cli("connectors", "show", "orders", "totals", "sink1", "--json"))
    assert shown["transport"] == {"name": "file", "config": {"path": "out/totals.jsonl"}}
    assert shown == client.get("/v0/pipelines/orders/views/totals/connectors/sink1").get_json()
    out = ok(cli("connectors", "show", "orders", "totals", "sink1"))
    assert re.search(r"^config: +path=out/totals.jsonl$", out, re.M)


def test_add_http_connector_with_timeout(cli):
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    body = ok_json(
        cli(
            "connectors", "add", "orders", "totals", "hook", "--transport", "http",
            "--url", "http://127.0.0.1:9000/in", "--timeout", "5", "--json",
        )
    )  # fmt: skip
    assert body["name"] == "hook" and body["transport"]["name"] == "http"
    assert body["transport"]["config"]["url"] == "http://127.0.0.1:9000/in"
    # The driver normalises the settings; the CLI stores what the API would.
    assert "5" in json.dumps(body["transport"]["config"]["timeout"])


def test_add_table_sink_connectors(cli, monkeypatch):
    """postgres: a variable's name, a table, key columns; delta: a folder. No DSN is shown."""
    monkeypatch.setenv("SINK_DSN_WAREHOUSE", "postgresql://u:secret@db.invalid/w")
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    body = ok_json(
        cli(
            "connectors", "add", "orders", "totals", "warehouse", "--transport", "postgres",
            "--dsn-env", "SINK_DSN_WAREHOUSE", "--table", "analytics.totals",
            "--key", "id", "--key", "day", "--json",
        )
    )  # fmt: skip
    assert body["transport"] == {
        "name": "postgres",
        "config": {
            "dsn_env": "SINK_DSN_WAREHOUSE",
            "table": "analytics.totals",
            "mode": "rows",
            "key": ["id", "day"],
        },
    }
    out = ok(
        cli(
            "connectors", "add", "orders", "totals", "lake", "--transport", "delta",
            "--path", "tables/totals",
        )
    )  # fmt: skip
    assert "delta: path=tables/totals mode=changes" in out
    listed = ok(cli("connectors", "list", "orders"))
    assert "secret" not in listed and "dsn_env=SINK_DSN_WAREHOUSE" in listed
    details = cli_error(
        cli(
            "connectors", "add", "orders", "totals", "bad", "--transport", "postgres",
            "--dsn-env", "DATABASE_URL", "--table", "t",
        ),
        "InvalidRequest",
    )  # fmt: skip
    assert "transport.config.dsn_env" in details
    details = cli_error(
        cli(
            "connectors", "add", "orders", "totals", "bad", "--transport", "delta",
            "--path", "tables/x", "--key", "id",
        ),
        "InvalidRequest",
    )  # fmt: skip
    assert details == {"transport.config.key": ["A key applies to mode rows."]}
    body = ok_json(
        cli(
            "connectors", "add", "orders", "totals", "keyed", "--transport", "delta",
            "--path", "tables/keyed", "--mode", "rows", "--key", "id",
            "--column", "id=long", "--column", "price=decimal(10,2)", "--json",
        )
    )  # fmt: skip
    assert body["transport"]["config"] == {
        "path": "tables/keyed",
        "mode": "rows",
        "columns": {"id": "long", "price": "decimal(10,2)"},
        "key": ["id"],
    }
    details = cli_error(
        cli(
            "connectors", "add", "orders", "totals", "bad", "--transport", "delta",
            "--path", "tables/y", "--column", "id=int",
        ),
        "InvalidRequest",
    )  # fmt: skip
    assert "unknown type" in details["transport.config.columns"][0]


def test_connectors_list_covers_all_views_or_one(cli):
    ok(cli("pipelines", "create", "orders", "--view", "totals", "--view", "hist"))
    for view, name in (("totals", "a"), ("hist", "b"), ("totals", "c")):
        ok(
            cli(
                "connectors", "add", "orders", view, name,
                "--transport", "file", "--path", f"{view}-{name}.jsonl",
            )
        )  # fmt: skip
    every = ok_json(cli("connectors", "list", "orders", "--json"))
    assert [(c["view_name"], c["name"]) for c in every] == [
        ("totals", "a"),
        ("totals", "c"),
        ("hist", "b"),
    ]
    one = ok_json(cli("connectors", "list", "orders", "hist", "--json"))
    assert [c["name"] for c in one] == ["b"]
    lines = ok(cli("connectors", "list", "orders", "totals")).splitlines()
    assert lines[0].split() == ["VIEW", "CONNECTOR", "TRANSPORT", "CONFIG"]
    assert lines[1].split() == ["totals", "a", "file", "path=totals-a.jsonl"]


def test_remove_connector(cli, stopped):
    assert (
        ok(cli("connectors", "remove", "orders", "totals", "sink1"))
        == "Removed connector 'sink1' from orders/totals\n"
    )
    assert ok_json(cli("connectors", "list", "orders", "--json")) == []


# -- resets ---------------------------------------------------------------------


def test_issue_prints_the_token_alone(cli, running):
    result = cli("resets", "issue", "orders", "totals", "sink1")
    out = ok(result)
    assert out.endswith("\n") and out.count("\n") == 1
    assert re.fullmatch(r"[A-Za-z0-9_.\-]+", out.strip())


def test_issue_while_queued_returns_the_same_token(cli, running):
    first = issue(cli)
    assert issue(cli) == first
    body = ok_json(cli("resets", "issue", "orders", "totals", "sink1", "--json"))
    assert body["token"] == first
    assert body["status_url"].startswith("/v0/pipelines/orders/reset_status?token=")


def test_cancel_prints_the_cancelled_status_and_wait_exits_1(cli, running):
    token = issue(cli)
    body = ok_json(cli("resets", "cancel", "orders", token))
    assert (body["status"], body["connector_name"]) == ("cancelled", "sink1")
    result = cli("resets", "wait", "orders", token)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "cancelled"
    assert "Error: The reset was cancelled" in result.stderr
    details = cli_error(cli("resets", "cancel", "orders", token), "ResetNotCancellable")
    assert details["reason"] == "cancelled"


def test_issue_dry_run_previews_and_changes_nothing(cli, running):
    preview = ok_json(cli("resets", "issue", "orders", "totals", "sink1", "--dry-run"))
    assert (preview["action"], preview["switch"]) == ("queue", "atomic")
    token = issue(cli)
    preview = ok_json(cli("resets", "issue", "orders", "totals", "sink1", "--dry-run"))
    assert preview["action"] == "attach"
    assert preview["reset_in_progress"]["status_url"].endswith(token)


def test_status_json_equals_the_api_body(cli, running, client):
    token = issue(cli)
    body = ok_json(cli("resets", "status", "orders", token))
    assert body == client.get(f"/v0/pipelines/orders/reset_status?token={token}").get_json()
    assert (body["status"], body["phase"], body["connector_name"]) == (
        "inprogress",
        "queued",
        "sink1",
    )


def test_reset_end_to_end_empties_the_file_sink(cli, app, tmp_path: Path, run_resets):
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    ok(
        cli(
            "connectors", "add", "orders", "totals", "sink1",
            "--transport", "file", "--path", "out/totals.jsonl",
        )
    )  # fmt: skip
    ok(cli("pipelines", "start", "orders"))
    sink = tmp_path / "sinks" / "default" / "out" / "totals.jsonl"
    sink.parent.mkdir(parents=True)
    sink.write_text('{"insert": {"stale": 1}}\n')

    token = issue(cli)
    assert ok_json(cli("resets", "status", "orders", token))["phase"] == "queued"
    assert run_resets() == 1

    result = cli("resets", "wait", "orders", token, "--interval", "0.05")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    final = json.loads(result.stdout)
    assert (final["status"], final["phase"]) == ("complete", "done")
    assert final["completed_at"] is not None
    last = json.loads(result.stderr.splitlines()[-1])
    assert (last["connector"], last["phase"]) == ("orders/totals/sink1", "done")
    assert sink.read_bytes() == b""


def test_reset_replays_the_view_snapshot_into_the_file_sink(cli, running, tmp_path, run_resets):
    changes = tmp_path / "changes.ndjson"
    changes.write_text("".join(f'{{"insert": {{"id": {i}}}}}\n' for i in range(3)))
    ok(cli("views", "push", "orders", "totals", str(changes)))
    token = issue(cli)
    run_resets()
    result = cli("resets", "wait", "orders", token)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    final = json.loads(result.stdout)
    assert (final["snapshot_records"], final["replayed_records"]) == (3, 3)
    (line,) = [json.loads(text) for text in result.stderr.splitlines()]
    assert line == {
        "connector": "orders/totals/sink1",
        "status": "complete",
        "phase": "done",
        "replayed_records": 3,
        "snapshot_records": 3,
        "records_per_second": 0.0,
        "attempts": 1,
        "error": None,
    }
    sink = tmp_path / "sinks" / "default" / "out" / "totals.jsonl"
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    assert sorted(line["insert"]["id"] for line in lines) == [0, 1, 2]


def test_wait_sees_a_worker_that_runs_elsewhere(cli, running, run_resets):
    token = issue(cli)
    worker_done = threading.Event()

    def worker() -> None:
        # Let wait poll the queued reset a few times first.
        time.sleep(0.4)
        run_resets()
        worker_done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        result = cli("resets", "wait", "orders", token, "--interval", "0.05", "--timeout", "20")
    finally:
        thread.join()
    assert worker_done.is_set()
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["status"] == "complete"
    progress = [json.loads(line) for line in result.stderr.splitlines()]
    # A JSON line per poll that moved (stderr is not a terminal): queued first, then the end.
    assert (progress[0]["status"], progress[0]["phase"]) == ("inprogress", "queued")
    assert progress[0]["snapshot_records"] is None  # not counted yet
    assert (progress[-1]["status"], progress[-1]["phase"]) == ("complete", "done")
    assert len(progress) == len({(p["status"], p["phase"]) for p in progress})


def test_wait_notices_a_stop_made_elsewhere(cli, app, running):
    from app.extensions import db
    from app.pipelines import service

    token = issue(cli)

    def operator() -> None:
        time.sleep(0.3)
        with app.app_context():
            service.stop(service.get_pipeline("default", "orders"))
            db.session.remove()

    thread = threading.Thread(target=operator)
    thread.start()
    try:
        result = cli("resets", "wait", "orders", token, "--interval", "0.05", "--timeout", "20")
    finally:
        thread.join()
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    # Progress first, then the error and its details.
    assert json.loads(lines[0])["phase"] == "queued"
    assert ERROR_LINE.match(lines[-2])["code"] == "PipelineNotRunning"
    assert json.loads(lines[-1])["pipeline_name"] == "orders"


def test_wait_times_out_with_status_3(cli, running):
    token = issue(cli)
    started = time.monotonic()
    result = cli("resets", "wait", "orders", token, "--timeout", "0.3", "--interval", "0.05")
    assert time.monotonic() - started < 5
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["status"] == "inprogress"
    assert "Error: The reset is still queued after 0.3 seconds" in result.stderr


def test_wait_exits_1_when_the_reset_fails(app, cli, tmp_path: Path, run_resets):
    app.config.update(RESET_MAX_ATTEMPTS=1, RESET_RETRY_SECONDS=0)  # the first failure is final
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    ok(
        cli(
            "connectors", "add", "orders", "totals", "sink1",
            "--transport", "file", "--path", "blocker/totals.jsonl",
        )
    )  # fmt: skip
    ok(cli("pipelines", "start", "orders"))
    # A file where the sink's folder should be: resetting the sink fails.
    (tmp_path / "sinks" / "default").mkdir(parents=True, exist_ok=True)
    (tmp_path / "sinks" / "default" / "blocker").write_text("not a folder")
    token = issue(cli)
    run_resets()
    result = cli("resets", "wait", "orders", token)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    final = json.loads(result.stdout)
    assert final["status"] == "failed" and final["error"]
    assert f"Error: The reset failed: {final['error']}" in result.stderr


def test_wait_draws_a_progress_bar_on_a_terminal(cli, running, run_resets, monkeypatch):
    import click._termui_impl

    monkeypatch.setattr("app.resets.cli.stderr_is_tty", lambda: True)
    monkeypatch.setattr(click._termui_impl, "isatty", lambda _f: True)
    token = issue(cli)

    def worker() -> None:
        # Over a second of queued polls: click's bar starts estimating then.
        time.sleep(1.3)
        run_resets()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        result = cli("resets", "wait", "orders", token, "--interval", "0.05", "--timeout", "20")
    finally:
        thread.join()
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert json.loads(result.stdout)["status"] == "complete"
    drawn = result.stderr.split("\r")  # drawn in place, not line by line
    assert any("orders/totals/sink1" in d and "queued, 0/? records" in d for d in drawn)
    assert "done, 0/0 records replayed (complete)" in drawn[-1]
    assert "#" * 10 in drawn[-1]  # an empty snapshot is all replayed: a full bar


def test_wait_after_stop_says_the_pipeline_is_not_running(cli, running):
    token = issue(cli)
    ok(cli("pipelines", "stop", "orders"))
    details = cli_error(cli("resets", "wait", "orders", token), "PipelineNotRunning")
    assert details["pipeline_name"] == "orders"


def test_wait_after_restart_says_the_pipeline_restarted(cli, running):
    token = issue(cli)
    ok(cli("pipelines", "restart", "orders"))
    details = cli_error(cli("resets", "wait", "orders", token), "PipelineRestarted")
    assert (details["token_incarnation"], details["current_incarnation"]) == (1, 2)


def test_run_carries_out_queued_resets(cli, running):
    token = issue(cli)
    assert ok(cli("resets", "run")) == "Ran 1 reset(s)\n"
    assert ok_json(cli("resets", "status", "orders", token))["status"] == "complete"
    assert ok(cli("resets", "run")) == "Ran 0 reset(s)\n"


# -- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("pipelines", "show", "nope"),
        ("pipelines", "start", "nope"),
        ("pipelines", "stop", "nope"),
        ("pipelines", "pause", "nope"),
        ("pipelines", "resume", "nope"),
        ("pipelines", "restart", "nope"),
        ("pipelines", "delete", "nope"),
        ("connectors", "list", "nope"),
        ("connectors", "show", "nope", "totals", "sink1"),
        ("connectors", "remove", "nope", "totals", "sink1"),
        ("connectors", "add", "nope", "totals", "sink1", "--transport", "file", "--path", "x"),
        ("resets", "issue", "nope", "totals", "sink1"),
        ("resets", "status", "nope", "token"),
        ("resets", "wait", "nope", "token"),
    ],
)
def test_unknown_pipeline_is_an_error(cli, args):
    details = cli_error(cli(*args), "UnknownPipelineName")
    assert details == {"pipeline_name": "nope"}


def test_another_tenants_pipeline_is_unknown(cli, running):
    cli_error(cli("pipelines", "show", "orders", "--tenant", "other"), "UnknownPipelineName")
    token = issue(cli)
    cli_error(cli("resets", "status", "orders", token, "--tenant", "other"), "UnknownPipelineName")


@pytest.mark.parametrize(
    ("args", "error_code"),
    [
        (("connectors", "list", "orders", "nope"), "UnknownView"),
        (("connectors", "show", "orders", "nope", "sink1"), "UnknownView"),
        (("connectors", "show", "orders", "totals", "nope"), "UnknownConnector"),
        (("connectors", "remove", "orders", "totals", "nope"), "UnknownConnector"),
        (
            ("connectors", "add", "orders", "nope", "s2", "--transport", "file", "--path", "x"),
            "UnknownView",
        ),
    ],
)
def test_unknown_view_or_connector_is_an_error(cli, stopped, args, error_code):
    cli_error(cli(*args), error_code)


@pytest.mark.parametrize(
    "args",
    [
        ("pipelines", "delete", "orders"),
        ("connectors", "remove", "orders", "totals", "sink1"),
        ("connectors", "add", "orders", "totals", "s2", "--transport", "file", "--path", "x"),
    ],
)
def test_changes_need_a_stopped_pipeline(cli, running, args):
    details = cli_error(cli(*args), "PipelineNotStopped")
    assert details == {"pipeline_name": "orders", "status": "running"}


def test_issue_on_a_stopped_pipeline_is_not_running(cli, stopped):
    details = cli_error(cli("resets", "issue", "orders", "totals", "sink1"), "PipelineNotRunning")
    assert details["pipeline_name"] == "orders"


def test_status_on_a_stopped_pipeline_is_not_running(cli, running):
    token = issue(cli)
    ok(cli("pipelines", "stop", "orders"))
    cli_error(cli("resets", "status", "orders", token), "PipelineNotRunning")


@pytest.mark.parametrize(("action", "status"), [("pause", "stopped"), ("resume", "stopped")])
def test_illegal_lifecycle_action(cli, stopped, action, status):
    details = cli_error(cli("pipelines", action, "orders"), "IllegalPipelineAction")
    assert (details["status"], details["action"]) == (status, action)


def test_duplicate_pipeline_name(cli):
    ok(cli("pipelines", "create", "orders"))
    details = cli_error(cli("pipelines", "create", "orders"), "DuplicateName")
    assert details == {"pipeline_name": "orders"}


def test_duplicate_connector_name(cli, stopped):
    result = cli(
        "connectors", "add", "orders", "totals", "sink1", "--transport", "file", "--path", "y"
    )
    cli_error(result, "DuplicateName")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("pipelines", "create", "bad name"), "name"),
        (("pipelines", "create", "x" * 101), "name"),
        (("pipelines", "create", "ok", "--view", "no/slash"), "views"),
        (("pipelines", "create", "ok", "--view", "v", "--view", "v"), "views"),
    ],
)
def test_bad_names_are_refused_as_the_api_refuses_them(cli, client, args, field):
    details = cli_error(cli(*args), "InvalidRequest")
    assert field in details
    name, views = args[2], [a for a in args[3:] if a != "--view"]
    api = client.post("/v0/pipelines", json={"name": name, "views": views})
    # The same refusal through both doors (the API's status code is tested elsewhere).
    assert api.get_json()["error_code"] == "InvalidRequest"
    assert api.get_json()["details"] == details
    assert ok_json(cli("pipelines", "list", "--json")) == []


def test_bad_connector_name_is_refused(cli, stopped):
    result = cli(
        "connectors", "add", "orders", "totals", "no good", "--transport", "file", "--path", "x"
    )
    assert "name" in cli_error(result, "InvalidRequest")


def test_bad_tenant_name_is_refused(cli):
    details = cli_error(cli("pipelines", "create", "orders", "--tenant", "a b"), "InvalidRequest")
    assert "tenant" in details


@pytest.mark.parametrize("path", ["../escape.jsonl", "out/../../escape.jsonl", "/etc/passwd", "."])
def test_sink_path_escaping_the_sink_dir_is_refused(cli, client, path):
    ok(cli("pipelines", "create", "orders", "--view", "totals"))
    result = cli(
        "connectors", "add", "orders", "totals", "sink1", "--transport", "file", "--path", path
    )
    details = cli_error(result, "InvalidRequest")
    assert "transport.config.path" in details
    api = client.post(
        "/v0/pipelines/orders/views/totals/connectors",
        json={"name": "sink1", "transport": {"name": "file", "config": {"path": path}}},
    )
    assert api.status_code == 400 and api.get_json()["details"] == details


@pytest.mark.parametrize(
    "options",
    [
        ("--transport", "file"),
        ("--transport", "file", "--path", "x", "--url", "http://h/"),
        ("--transport", "http", "--url", "ftp://h/in"),
        ("--transport", "http", "--path", "x"),
        ("--transport", "http", "--url", "http://h/in", "--timeout", "0"),
    ],
)
def test_transport_settings_are_checked_by_the_driver(cli, stopped, options):
    result = cli("connectors", "add", "orders", "totals", "s2", *options)
    details = cli_error(result, "InvalidRequest")
    assert any(key.startswith("transport.config") for key in details), details


@pytest.mark.parametrize(
    ("token", "reason"),
    [("not-a-token", "malformed"), ("a.b.c", "bad_signature")],
)
def test_bad_token_is_an_error(cli, running, token, reason):
    details = cli_error(cli("resets", "status", "orders", token), "InvalidResetToken")
    assert details["reason"] == reason


def test_tampered_token_is_an_error(cli, running):
    token = issue(cli)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    details = cli_error(cli("resets", "wait", "orders", tampered), "InvalidResetToken")
    assert details["reason"] == "bad_signature"


@pytest.mark.parametrize(
    "args",
    [
        ("connectors", "add", "orders", "totals", "s2", "--path", "x"),
        ("connectors", "add", "orders", "totals", "s2", "--transport", "ftp"),
        ("resets", "wait", "orders", "token", "--timeout", "0"),
        ("pipelines", "create"),
        ("pipelines", "frobnicate", "orders"),
    ],
)
def test_usage_errors_exit_2(cli, args):
    result = cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Usage:" in result.stderr


def test_connector_stats_show_a_refused_batch_and_the_sync_state(app, cli, stopped, tmp_path):
    from tests.receiver import Receiver

    with Receiver() as receiver:
        ok(
            cli(
                "connectors", "add", "orders", "totals", "hook",
                "--transport", "http", "--url", receiver.url,
            )
        )  # fmt: skip
        ok(cli("pipelines", "start", "orders"))
        receiver.refuse(400, '{"error": "bad record"}')
        changes = tmp_path / "changes.json"
        changes.write_text('[{"insert": {"id": 1}}]')
        ok(cli("views", "push", "orders", "totals", str(changes)))
        with app.app_context():
            DeliveryWorker("w").run_pending()
            db.session.remove()
        text = ok(cli("connectors", "stats", "orders", "totals", "hook"))
        data = ok_json(cli("connectors", "stats", "orders", "totals", "hook", "--json"))
    assert data["health"] == "failed" and data["sync_state"] == "failed"
    assert 'HTTP 400: {"error": "bad record"}' in data["last_error"]
    assert "sync_state:" in text and "failed" in text and "bad record" in text


def test_every_command_help_reads_as_plain_text(app):
    """No reST markup (double backticks) in any command's help, which click shows as is."""
    import click

    runner = app.test_cli_runner()

    def walk(group: click.Group, path: tuple[str, ...]):
        for name, command in group.commands.items():
            yield (*path, name)
            if isinstance(command, click.Group):
                yield from walk(command, (*path, name))

    for path in walk(app.cli, ()):
        if path[0] in ("db", "routes", "shell", "run"):
            continue  # Flask's and Flask-Migrate's own commands
        result = runner.invoke(args=[*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "``" not in result.output, path


def test_db_help_names_this_project_s_migrations_folder(app):
    runner = app.test_cli_runner()
    for args in (["db", "--help"], ["db", "upgrade", "--help"], ["db", "migrate", "--help"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
        assert "(default: app/migrations)" in result.output, args
        assert 'default is "migrations"' not in result.output, args
