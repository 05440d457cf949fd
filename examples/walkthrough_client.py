"""The README's walk-through, through a Python client generated from the OpenAPI document.

    make client                      # build/client: the package pipeline_manager_client
    KEY=$(.venv/bin/pipeline-manager api-keys create me --role write)
    PYTHONPATH=build/client .venv/bin/python examples/walkthrough_client.py \\
        --url http://127.0.0.1:5000 --key "$KEY"

It removes the pipeline ``orders`` an earlier run left, creates it with the view
``totals`` and the file connector ``sink1`` (``out/totals.jsonl`` in the tenant's
sink folder), starts it, pushes two changes and waits until they are delivered,
resets the connector and polls its reset_status until it is complete, then
restarts the pipeline and shows the old token answer 410. One line per step on
stdout; exit 1 when an answer is not the one expected.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pkgutil
import sys
import time
from http import HTTPStatus
from types import ModuleType
from typing import Any

import pipeline_manager_client.api
from pipeline_manager_client import AuthenticatedClient
from pipeline_manager_client.models import (
    ConnectorCreate,
    Error,
    FileTransportIn,
    FileTransportInConfig,
    FileTransportInName,
    PipelineCreate,
    PipelineOutStatus,
    PushChangesJsonBodyItem,
    ResetStatusOutStatus,
)
from pipeline_manager_client.types import Response


def operation(operation_id: str) -> ModuleType:
    """The generated module of one operation, ``api/<tag>/<operation_id>.py``.

    Operation ids are the document's stable names; the tag folders only group them.
    """
    api = pipeline_manager_client.api
    for tag in pkgutil.iter_modules(api.__path__):
        name = f"{api.__name__}.{tag.name}.{operation_id}"
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    raise LookupError(f"no operation {operation_id!r} in the generated client")


add_connector = operation("add_connector")
create_pipeline = operation("create_pipeline")
delete_pipeline = operation("delete_pipeline")
get_connector_stats = operation("get_connector_stats")
get_pipeline = operation("get_pipeline")
get_reset_status = operation("get_reset_status")
push_changes = operation("push_changes")
reset_connector = operation("reset_connector")
restart_pipeline = operation("restart_pipeline")
start_pipeline = operation("start_pipeline")
stop_pipeline = operation("stop_pipeline")

PIPELINE, VIEW, CONNECTOR = "orders", "totals", "sink1"


class Unexpected(Exception):
    """An answer the walk-through did not expect."""


def expect(response: Response[Any], *statuses: HTTPStatus) -> Any:
    """The parsed answer, if its status is one of ``statuses``."""
    if response.status_code not in statuses:
        raise Unexpected(f"{response.status_code}: {response.content.decode(errors='replace')}")
    return response.parsed


def show(step: str, model: Any) -> None:
    print(f"{step}: {json.dumps(model.to_dict(), sort_keys=True)}")


def poll(check, timeout: float, what: str) -> Any:
    """``check()`` until it returns something, every 0.2 s, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (found := check()) is None:
        if time.monotonic() > deadline:
            raise Unexpected(f"no {what} after {timeout} s")
        time.sleep(0.2)
    return found


def walk(client: AuthenticatedClient, timeout: float) -> None:
    # Start fresh: remove the pipeline an earlier run made (stopped first).
    found = get_pipeline.sync_detailed(PIPELINE, client=client)
    if found.status_code == HTTPStatus.OK:
        if found.parsed.status != PipelineOutStatus.STOPPED:
            expect(stop_pipeline.sync_detailed(PIPELINE, client=client), HTTPStatus.OK)
        expect(delete_pipeline.sync_detailed(PIPELINE, client=client), HTTPStatus.NO_CONTENT)

    body = PipelineCreate(name=PIPELINE, views=[VIEW], description="Order totals")
    created = expect(create_pipeline.sync_detailed(client=client, body=body), HTTPStatus.CREATED)
    print(f"created: pipeline {created.name}, views {created.views}, {created.status}")
    transport = FileTransportIn(
        name=FileTransportInName.FILE, config=FileTransportInConfig(path="out/totals.jsonl")
    )
    connector = ConnectorCreate(name=CONNECTOR, transport=transport)
    added = add_connector.sync_detailed(PIPELINE, VIEW, client=client, body=connector)
    added = expect(added, HTTPStatus.CREATED)
    print(f"connector: {added.name} on view {added.view_name}")
    started = expect(start_pipeline.sync_detailed(PIPELINE, client=client), HTTPStatus.OK)
    print(f"started: {started.status}, incarnation {started.incarnation}")

    changes = [
        PushChangesJsonBodyItem.from_dict({"insert": {"id": 1, "total": 10}}),
        PushChangesJsonBodyItem.from_dict({"insert": {"id": 2, "total": 5}}),
    ]
    pushed = push_changes.sync_detailed(PIPELINE, VIEW, client=client, body=changes)
    accepted = expect(pushed, HTTPStatus.OK)
    show("pushed", accepted)

    def delivered():
        stats = get_connector_stats.sync_detailed(PIPELINE, VIEW, CONNECTOR, client=client)
        stats = expect(stats, HTTPStatus.OK)
        return stats if stats.delivered_seq >= accepted.log_end else None

    stats = poll(delivered, timeout, "delivery")
    print(f"delivered: {stats.transmitted_records} records, up to seq {stats.delivered_seq}")

    issued = expect(
        reset_connector.sync_detailed(PIPELINE, VIEW, CONNECTOR, client=client),
        HTTPStatus.ACCEPTED,
    )
    print(f"reset issued: {issued.status}, {issued.phase}")

    def finished():
        status = get_reset_status.sync_detailed(PIPELINE, client=client, token=issued.token)
        status = expect(status, HTTPStatus.OK)
        if status.status == ResetStatusOutStatus.FAILED:
            raise Unexpected(f"the reset failed: {status.error}")
        return status if status.status == ResetStatusOutStatus.COMPLETE else None

    show("reset", poll(finished, timeout, "complete reset"))

    restarted = restart_pipeline.sync_detailed(PIPELINE, client=client)
    restarted = expect(restarted, HTTPStatus.OK)
    print(f"restarted: {restarted.status}, incarnation {restarted.incarnation}")
    gone = get_reset_status.sync_detailed(PIPELINE, client=client, token=issued.token)
    error = expect(gone, HTTPStatus.GONE)
    if not isinstance(error, Error) or error.error_code != "PipelineRestarted":
        raise Unexpected(f"the old token's answer: {gone.content.decode()}")
    show("old token", error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="the service's base URL")
    parser.add_argument("--key", required=True, help="an API key with the write role")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each step")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # one line per step, as it happens
    with AuthenticatedClient(base_url=args.url, token=args.key, timeout=10) as client:
        try:
            walk(client, args.timeout)
        except Unexpected as error:
            print(f"unexpected answer: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
