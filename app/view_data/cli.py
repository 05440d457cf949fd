"""``pipeline-manager views push`` (changes from a file, as the engine would) and ``compact``."""

from __future__ import annotations

import click

from app.cli_helpers import OperatorGroup, echo_json, json_option, tenant_option
from app.pipelines.service import get_pipeline
from app.view_data import compaction, service

views = OperatorGroup("views", help="Push view changes; compact change logs.")

FORMATS = ("auto", "json", "ndjson")


def _content_type(data: bytes, name: str, fmt: str) -> str:
    """Pick the parser: by ``--format``, else by the file's name, else by its first character."""
    if fmt == "auto":
        if name.endswith((".ndjson", ".jsonl")):
            fmt = "ndjson"
        elif name.endswith(".json"):
            fmt = "json"
        else:
            fmt = "json" if data.lstrip()[:1] == b"[" else "ndjson"
    return "application/x-ndjson" if fmt == "ndjson" else "application/json"


@views.command("push")
@click.argument("pipeline")
@click.argument("view")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="json: one JSON array; ndjson: one change per line; auto: guess.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Store the file as several batches of this many changes (each atomic). "
    "Default: the whole file as one batch.",
)
@tenant_option
@json_option
def push_command(
    pipeline: str,
    view: str,
    file: click.utils.LazyFile,
    fmt: str,
    batch_size: int | None,
    tenant: str,
    as_json: bool,
) -> None:
    """Push FILE of changes to VIEW of PIPELINE ('-' reads stdin).

    FILE holds Feldera's JSON format: a JSON array of {"insert": {...}} and
    {"delete": {...}} objects, or one such object per line. The pipeline must
    be running or paused.
    """
    target = service.writable_view(get_pipeline(tenant, pipeline), view)
    data = file.read()
    changes = service.parse_changes(data, _content_type(data, file.name or "", fmt))
    size = batch_size or max(1, len(changes))
    results = [
        service.push_changes(target, changes[start : start + size])
        for start in range(0, max(1, len(changes)), size)
    ]
    inserts = sum(r.inserts for r in results)
    deletes = sum(r.deletes for r in results)
    if as_json:
        firsts = [r.first_seq for r in results if r.first_seq is not None]
        echo_json(
            {
                "records": inserts + deletes,
                "inserts": inserts,
                "deletes": deletes,
                "batches": len(results),
                "first_seq": firsts[0] if firsts else None,
                "last_seq": results[-1].last_seq,
                "log_end": results[-1].log_end,
            }
        )
    else:
        click.echo(
            f"Pushed {inserts + deletes} changes ({inserts} inserts, {deletes} deletes) "
            f"to {pipeline}/{view} in {len(results)} batch(es); the log ends at "
            f"{results[-1].log_end}"
        )


@views.command("compact")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Rows removed per statement. Default: COMPACTION_BATCH_SIZE.",
)
@json_option
def compact_command(batch_size: int | None, as_json: bool) -> None:
    """Remove every change-log row that all connectors of its view have delivered.

    What the worker does in the background a whole batch at a time, done now
    down to the last row: a view with no connector keeps only its contents.
    """
    removed = 0
    while count := compaction.compact(batch_size=batch_size, min_rows=1, everything=True):
        removed += count
    if as_json:
        echo_json({"removed_rows": removed})
    else:
        click.echo(f"Removed {removed} change-log rows")
