"""The introduction at the top of the API reference (``info.description``, Markdown)."""

from __future__ import annotations

_INTRODUCTION = """\
The pipeline manager owns the output side of streaming pipelines. A pipeline's
engine, running elsewhere, pushes the changes of its output views here
(**View Data**); each view's **Output Connectors** deliver those changes to a
sink: a file, an HTTP endpoint, a PostgreSQL table or a Delta Lake table.
**Pipelines** declare the views, **Pipeline Lifecycle** starts and stops them
(each start of a stopped pipeline begins a new *incarnation*), **API Keys**
manage who may call, and **Notifications** send a tenant's events (a reset
ended, a connector failed or fell out of sync) to its own HTTP endpoints,
signed. **Health** needs no credentials.

## Authorization

Every `/v0` operation needs a credential, a JWT or an API key, sent as a
Bearer token:

    Authorization: Bearer <credential>

An operator makes an API key on the server's command line; the key is printed
once, and only its hash is kept:

    pipeline-manager api-keys create NAME --role write

`--role` is `read` (may only read), `write` (may also change pipelines and
reset connectors) or `admin` (may also manage API keys and notification
endpoints); `--tenant` names the tenant (`default` unless given). A caller
with an `admin` credential may also create keys with **Create API Key**. A
JWT is accepted when the service is configured with the key that signs it;
its claims name the tenant and the role. A caller sees only its tenant's
pipelines.

On this page, press **Authorize**, paste the API key (`apikey:...`) or the
JWT, then **Try it out** on any operation. The credential stays authorized
when the page is reloaded, until **Logout** in the same dialog.

## Resets

**Reset Output Connector** makes the connector drop what it had buffered, ask
its sink to reset itself, replay a full snapshot of the view, then stream on.
A reset is asynchronous: its 202 answer holds a reset token, and
**Check Reset Status** (`GET /v0/pipelines/{pipeline_name}/reset_status?token=...`)
reports its progress. A reset goes through these phases:

{phases}

The reset's `status` is `inprogress`, then `complete` or `failed`. An attempt
that fails is retried (`attempts`, the last `error`, `next_attempt_at`) up to
a configured number of attempts. Stopping the pipeline abandons an unfinished
reset: after the next start, a new incarnation, its token answers 410, and the
reset must be issued again (the service itself redoes the snapshot the sink
still owes, as a reset of origin `redo`).
"""


# What happens in each phase of a reset, in order (the introduction's table).
RESET_PHASES = {
    "queued": "The reset waits for a worker. Asking for a reset of the connector again "
    "returns this reset and its token.",
    "resetting_sink": "Nothing streams to the connector any more. A file sink gets a new, "
    "empty file beside the old one; an HTTP sink is sent a reset message.",
    "replaying_snapshot": "The view as of one position of its change log is sent as batches "
    "of inserts: `replayed_records` counts up to `snapshot_records`.",
    "done": "The connector is back in sync at that position (a file sink's new file "
    "replaces the old one) and streams the changes pushed since.",
}
INTRODUCTION = _INTRODUCTION.replace(
    "{phases}",
    "\n".join(
        ["| Phase | What happens |", "|---|---|"]
        + [f"| `{phase}` | {text} |" for phase, text in RESET_PHASES.items()]
    ),
)
