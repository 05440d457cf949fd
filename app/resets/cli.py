"""``pipeline-manager resets ...``: issue output connector resets and follow them.

``wait`` only polls the database, so it works whoever does the reset: a
serving process's background worker, ``pipeline-manager worker`` elsewhere,
or ``pipeline-manager resets run``, which carries out the queued resets once and exits.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from app.cli_helpers import (
    OperatorGroup,
    echo_json,
    echo_table,
    json_option,
    stderr_is_tty,
    tenant_option,
)
from app.connectors.service import get_connector
from app.extensions import db
from app.pipelines.service import get_pipeline
from app.resets import service
from app.resets.executor import ResetExecutor
from app.resets.models import ResetPhase, ResetStatus
from app.resets.routes import status_url
from app.resets.schemas import ResetHistoryItem, ResetIssued, ResetPreview
from app.resets.service import history
from app.schemas import MAX_PAGE_SIZE

# Exit statuses of ``wait`` besides 0 (complete) and 1 (failed, or an error).
EXIT_TIMEOUT = 3

resets = OperatorGroup("resets", help="Reset output connectors and follow their progress.")


@resets.command("issue")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Change nothing: print (as JSON) what a reset would do now.",
)
@tenant_option
@json_option
def issue_command(
    pipeline: str, view: str, connector: str, dry_run: bool, tenant: str, as_json: bool
) -> None:
    """Reset CONNECTOR of VIEW of running PIPELINE; print the reset token.

    While a reset of the connector is queued or running, its token is printed
    again: the command attaches to that reset rather than start another.
    """
    found = get_pipeline(tenant, pipeline)
    if dry_run:
        preview = service.preview_reset(found, view, connector)
        live = preview["reset_in_progress"]
        if live is not None:
            live["status_url"] = status_url(found.name, live.pop("token"))
        echo_json(ResetPreview().dump(preview))
        return
    reset = service.request_reset(found, view, connector)
    if as_json:
        reset.status_url = status_url(found.name, reset.token)
        echo_json(ResetIssued().dump(reset))
    else:
        click.echo(reset.token)


def _status(tenant: str, pipeline: str, token: str) -> dict[str, Any]:
    """Read a reset's status from the database as the API shows it."""
    return service.reset_status(tenant, pipeline, token)


@resets.command("status")
@click.argument("pipeline")
@click.argument("token")
@tenant_option
def status_command(pipeline: str, token: str, tenant: str) -> None:
    """Print the status JSON of the reset of PIPELINE that TOKEN names."""
    echo_json(_status(tenant, pipeline, token))


@resets.command("cancel")
@click.argument("pipeline")
@click.argument("token")
@tenant_option
def cancel_command(pipeline: str, token: str, tenant: str) -> None:
    """Cancel the reset of PIPELINE that TOKEN names; print its status JSON.

    Possible while the sink is untouched: while the reset is queued, or, on a
    file, postgres or delta sink, until its staged copy is switched in. The
    sink keeps what it had and the connector streams on from where it stopped.
    Otherwise the error says why (ResetNotCancellable) and the exit status is 1.
    """
    echo_json(service.cancel_reset(tenant, pipeline, token))


@resets.command("list")
@click.argument("pipeline")
@click.argument("view")
@click.argument("connector")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_PAGE_SIZE),
    default=20,
    show_default=True,
    help="How many of the newest resets to show.",
)
@tenant_option
@json_option
def list_command(
    pipeline: str, view: str, connector: str, limit: int, tenant: str, as_json: bool
) -> None:
    """List the resets of CONNECTOR of VIEW of PIPELINE, newest first (tokens not shown)."""
    found = history(get_connector(get_pipeline(tenant, pipeline), view, connector), limit)
    if as_json:
        echo_json(ResetHistoryItem(many=True).dump(found))
        return
    echo_table(
        ("reset_id", "status", "phase", "origin", "replayed", "requested_at", "completed_at"),
        [
            (
                str(r.id),
                r.status,
                r.phase,
                r.origin,
                f"{r.replayed_records}/{r.snapshot_records}",
                r.requested_at.isoformat(timespec="seconds"),
                r.completed_at.isoformat(timespec="seconds") if r.completed_at else "-",
            )
            for r in found
        ],
    )


class Progress:
    """Shows a reset's progress on stderr as it is polled.

    On a terminal, a bar of replayed / snapshot records with the rate and the
    time left. Otherwise (a log, a pipe) one JSON object per line, for each
    poll that moved: the connector, status, phase, the counts and the replay
    rate, so scripts can follow it.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.last: tuple[Any, ...] | None = None
        self.started = time.monotonic()
        self.first_replayed: int | None = None
        self.bar = None
        if stderr_is_tty():
            self.bar = click.progressbar(
                # Until the snapshot is counted, an empty bar of one step: click's
                # bar of unknown length can fail to draw.
                length=1,
                label=label,
                file=sys.stderr,
                show_percent=True,
                show_eta=True,
                item_show_func=lambda text: text,
                # Redraw on every poll, even one that replayed nothing (a new phase).
                update_min_steps=0,
            )
            self.bar.__enter__()

    def _rate(self, replayed: int) -> float:
        """Records replayed per second since this command first saw the replay."""
        if self.first_replayed is None:
            self.first_replayed = replayed
            self.started = time.monotonic()
        elapsed = time.monotonic() - self.started
        return (replayed - self.first_replayed) / elapsed if elapsed > 0 else 0.0

    def show(self, data: dict[str, Any]) -> None:
        """Show one polled status."""
        phase, replayed = data["phase"], data["replayed_records"]
        known = phase in (ResetPhase.REPLAYING_SNAPSHOT, ResetPhase.DONE)
        total = data["snapshot_records"] if known else None
        rate = self._rate(replayed) if known else 0.0
        if self.bar is not None:
            text = f"{phase}, {replayed}/{'?' if total is None else total} records replayed"
            text += f" at {rate:,.0f}/s ({data['status']})" if rate else f" ({data['status']})"
            self.bar.length = 1 if total is None else total
            self.bar.update(max(replayed - self.bar.pos, 0), text)
            return
        moved = (data["status"], phase, replayed, total)
        if moved == self.last:
            return
        self.last = moved
        line = {
            "connector": self.label,
            "status": data["status"],
            "phase": phase,
            "replayed_records": replayed,
            "snapshot_records": total,
            "records_per_second": round(rate, 1),
            "attempts": data.get("attempts"),
            "error": data.get("error"),
        }
        click.echo(json.dumps(line, separators=(",", ":")), err=True)

    def close(self) -> None:
        """End the bar's line."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@resets.command("wait")
@click.argument("pipeline")
@click.argument("token")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds to wait before giving up (exit status 3).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05, max=60),
    default=0.5,
    show_default=True,
    help="Seconds between polls.",
)
@tenant_option
def wait_command(pipeline: str, token: str, timeout: float, interval: float, tenant: str) -> None:
    """Follow the reset that TOKEN names until it ends; print its final status JSON.

    Progress goes to stderr. Exit status: 0 complete, 1 failed or cancelled
    (or an error such as the pipeline being stopped or restarted), 3 still in
    progress after --timeout.
    """
    deadline = time.monotonic() + timeout
    data = _status(tenant, pipeline, token)
    progress = Progress(f"{data['pipeline_name']}/{data['view_name']}/{data['connector_name']}")
    try:
        while True:
            progress.show(data)
            if data["status"] != ResetStatus.IN_PROGRESS:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(interval, remaining))
            # End the read transaction and expire what the session holds, so the
            # next poll sees what another process's worker wrote meanwhile.
            db.session.rollback()
            db.session.expire_all()
            data = _status(tenant, pipeline, token)
    finally:
        progress.close()
    echo_json(data)
    if data["status"] == ResetStatus.COMPLETE:
        return
    if data["status"] == ResetStatus.IN_PROGRESS:
        click.echo(
            f"Error: The reset is still {data['phase']} after {timeout:g} seconds; "
            "wait again with the same token",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_TIMEOUT)
    if data["status"] == ResetStatus.CANCELLED:
        click.echo("Error: The reset was cancelled; the sink kept what it had", err=True)
    else:
        click.echo(f"Error: The reset failed: {data['error']}", err=True)
    raise click.exceptions.Exit(1)


@resets.command("run")
def run_command() -> None:
    """Carry out the queued resets now, then exit.

    A one-shot worker for resets: it takes them with the same database leases
    as pipeline-manager worker and the serving processes, so it is safe beside them.
    """
    done = ResetExecutor().run_pending()
    click.echo(f"Ran {done} reset(s)")
