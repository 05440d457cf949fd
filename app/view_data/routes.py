"""HTTP routes of view data: the engine pushes view changes here."""

from __future__ import annotations

from typing import Any

from flask import request

from app import idempotency
from app.auth import current_tenant
from app.schemas import documents_errors
from app.view_data import service
from app.view_data.schemas import CHANGES_BODY, ChangesAccepted
from app.web import Blueprint

blp = Blueprint(
    "view_data",
    __name__,
    url_prefix="/v0/pipelines/<pipeline_name>/views/<view_name>",
    description="View changes pushed by the pipeline's engine.",
)


@blp.route("/changes", methods=["POST"])
@idempotency.idempotent(blp)
@blp.doc(requestBody=CHANGES_BODY)
@blp.response(200, ChangesAccepted)
@documents_errors(
    blp,
    {
        400: "InvalidRequest: the body is not a batch of changes; `details.index` and "
        "`details.problem` name the first bad element (a delete of a record the view "
        "does not hold is one; so are NaN, Infinity, 1e999, duplicate keys and lone "
        "surrogates)",
        404: "Unknown pipeline or view",
        413: "PayloadTooLarge: more changes or bytes than one batch may carry",
        415: "UnsupportedMediaType: the body is neither `application/json` nor "
        "newline-delimited JSON (`application/x-ndjson`, `application/jsonl`)",
        503: "PipelineNotRunning (the pipeline is stopped) or ServiceUnavailable",
    },
)
def push_changes(pipeline_name, view_name):
    """Push a batch of view changes

    The batch is stored atomically, in order, at the end of the view's change
    log, and folded into the view's contents. A paused pipeline takes changes
    in; its connectors deliver them after it resumes.
    """
    service.check_content_type(request.mimetype)
    view = service.view_to_push(current_tenant(), pipeline_name, view_name)
    service.check_size(size=request.content_length)
    # A chunked body over MAX_CONTENT_LENGTH raises 413 here (app.web.Request).
    body = request.get_data(cache=False)
    service.check_size(size=len(body))
    changes = service.parse_changes(body, request.mimetype)
    service.check_size(records=len(changes))
    result = service.push_changes(view, changes, before_commit=_save_answer)
    return _answer(result)


def _answer(result: service.PushResult) -> dict[str, Any]:
    """The 200 body of a stored batch."""
    return {
        "records": result.records,
        "inserts": result.inserts,
        "deletes": result.deletes,
        "first_seq": result.first_seq,
        "last_seq": result.last_seq,
        "log_end": result.log_end,
    }


def _save_answer(result: service.PushResult) -> None:
    """Keep the answer of an idempotent push in the batch's own transaction."""
    idempotency.save_in_transaction(200, _answer(result))
