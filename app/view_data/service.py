"""View changes in: parsing a batch, checking it, and storing it atomically."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app import strict_json
from app.delivery import due
from app.errors import InvalidRequest, PayloadTooLarge, PipelineNotRunning, UnsupportedMediaType
from app.extensions import db
from app.pipelines.models import Pipeline, PipelineStatus, View
from app.pipelines.service import get_pipeline_view, get_view
from app.view_data import store

JSON_TYPE = "application/json"
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
# JSON's own whitespace; str.strip() would also take U+2028 and the like.
JSON_WHITESPACE = " \t\r\n"
WEIGHTS = {"insert": store.INSERT, "delete": store.DELETE}


@dataclass(frozen=True)
class PushResult:
    """What a stored batch added to the view's log."""

    inserts: int
    deletes: int
    first_seq: int | None
    last_seq: int | None
    log_end: int

    @property
    def records(self) -> int:
        """How many changes the batch held."""
        return self.inserts + self.deletes


def bad_element(index: int, problem: str, **more: Any) -> InvalidRequest:
    """The 400 error naming the first bad element of a batch."""
    return InvalidRequest(
        f"Change {index} of the batch is not valid: {problem}",
        details={"index": index, "problem": problem, **more},
    )


def check_content_type(mimetype: str) -> None:
    """Raise 415 ``UnsupportedMediaType`` unless the body is JSON or newline-delimited JSON."""
    if mimetype != JSON_TYPE and mimetype not in NDJSON_TYPES:
        raise UnsupportedMediaType(
            "Send the changes as 'Content-Type: application/json' (a JSON array) or "
            "'application/x-ndjson' (one change per line)",
            details={"content_type": mimetype, "accepted": [JSON_TYPE, *NDJSON_TYPES]},
        )


def _parse_element(element: Any, index: int, **where: Any) -> tuple[int, str]:
    """Turn ``{"insert": {...}}`` / ``{"delete": {...}}`` into ``(weight, canonical JSON)``."""
    if not isinstance(element, dict):
        problem = strict_json.refusal(element) or 'expected an object like {"insert": {...}}'
        raise bad_element(index, problem, **where)
    if len(element) != 1 or next(iter(element)) not in ("insert", "delete"):
        raise bad_element(
            index, "expected exactly one key, 'insert' or 'delete'", keys=sorted(element), **where
        )
    ((op, record),) = element.items()
    if not isinstance(record, dict):
        problem = strict_json.refusal(record)
        raise bad_element(
            index, problem or f"the '{op}' value must be a JSON object (a record)", **where
        )
    try:
        text = store.canonical(record)
    except strict_json.JsonRefused as exc:
        raise bad_element(index, exc.problem, **where) from None
    return (store.INSERT if op == "insert" else store.DELETE), text


def _normal_element(element: Any, check_text: bool) -> tuple[int, str] | None:
    """The fast path of :func:`_parse_element`, for an element from ``decode_normal``.

    Returns None wherever :func:`_parse_element` might refuse the element (or
    must build the refusal): that one then judges it, with the same answer as
    if it had judged every element.
    """
    if type(element) is not dict or len(element) != 1:
        return None
    ((op, record),) = element.items()
    weight = WEIGHTS.get(op)
    if weight is None or type(record) is not dict:
        return None
    text = strict_json.dumps_canonical(record)
    # At most MAX_DEPTH containers (a text that short holds no more; braces in
    # strings count too) cannot nest too deep.
    if len(text) > 2 * strict_json.MAX_DEPTH and (
        text.count("{") + text.count("[") > strict_json.MAX_DEPTH
    ):
        return None
    if check_text and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return weight, text


def parse_changes(body: bytes, content_type: str | None = None) -> list[tuple[int, str]]:
    """Parse a batch: a JSON array, or newline-delimited JSON for the ndjson types.

    JSON is read strictly (:mod:`app.strict_json`): no NaN or infinities, no
    duplicate keys, no lone surrogates. Newline-delimited JSON is split on
    ``\\n`` alone (and ``\\r\\n``): U+2028 or U+0085 inside a string is not a
    line break. Raises ``InvalidRequest`` naming the first bad element
    (``details.index``, and ``details.line`` for newline-delimited JSON).

    Hot path (``make bench``, section b, ingestion): the body is decoded once
    with numbers normalized as they are read (``strict_json.decode_normal``),
    and each record encoded once to its canonical text. Whatever that fast
    path is unsure of goes the exact way (``strict_json.decode``, then
    :func:`_parse_element`), which words every refusal; the two give the same
    answer (``tests/test_view_data_parse.py`` compares them).
    """
    mimetype = (content_type or "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(
            "The body is not UTF-8", details={"body": ["The body must be UTF-8 encoded JSON."]}
        ) from None
    check_text = strict_json.may_hold_surrogates(text)
    if mimetype in NDJSON_TYPES:
        return _parse_lines(text, check_text)
    try:
        elements = strict_json.decode_normal(text)
    except strict_json.Unsure:
        elements = None
    if type(elements) is not list:
        return _parse_array_exactly(text)
    changes = []
    for index, element in enumerate(elements):
        change = _normal_element(element, check_text)
        changes.append(change or _parse_element(element, index))
    return changes


def _parse_lines(text: str, check_text: bool) -> list[tuple[int, str]]:
    """Parse newline-delimited JSON: one change per line, blank lines skipped."""
    changes = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(JSON_WHITESPACE):
            continue
        index = len(changes)
        try:
            element = strict_json.decode_normal(line)
        except strict_json.Unsure:
            try:
                element = strict_json.decode(line)
            except strict_json.JsonRefused as exc:
                raise bad_element(index, exc.problem, line=number) from None
            changes.append(_parse_element(element, index, line=number))
            continue
        change = _normal_element(element, check_text)
        changes.append(change or _parse_element(element, index, line=number))
    return changes


def _parse_array_exactly(text: str) -> list[tuple[int, str]]:
    """Parse a JSON array of changes the exact way, wording the first refusal."""
    try:
        elements = strict_json.decode(text)
    except strict_json.JsonRefused as exc:
        raise InvalidRequest(
            f"The body is not valid: {exc.problem}", details={"body": [exc.problem]}
        ) from None
    if not isinstance(elements, list):
        raise InvalidRequest(
            "The body must be a JSON array of changes",
            details={"body": ['Expected [{"insert": {...}}, {"delete": {...}}, ...].']},
        )
    return [_parse_element(element, index) for index, element in enumerate(elements)]


def max_records() -> int:
    """The most changes one batch may carry."""
    return int(current_app.config["VIEW_CHANGES_MAX_RECORDS"])


def max_bytes() -> int:
    """The largest body of one batch, in bytes."""
    return int(current_app.config["VIEW_CHANGES_MAX_BYTES"])


def check_size(*, records: int | None = None, size: int | None = None) -> None:
    """Raise ``PayloadTooLarge`` for a batch over the configured limits."""
    if size is not None and size > max_bytes():
        raise PayloadTooLarge(
            f"The batch is larger than the {max_bytes()} bytes accepted; split it",
            details={"max_bytes": max_bytes(), "bytes": size},
        )
    if records is not None and records > max_records():
        raise PayloadTooLarge(
            f"The batch holds more than the {max_records()} changes accepted; split it",
            details={"max_records": max_records(), "records": records},
        )


def writable_view(pipeline: Pipeline, view_name: str) -> View:
    """Return the view that changes go to, or raise (404 unknown view, 503 stopped).

    A paused pipeline takes changes in; only their delivery waits for resume.
    """
    view = get_view(pipeline, view_name)
    _check_taking_changes(pipeline)
    return view


def view_to_push(tenant: str, pipeline_name: str, view_name: str) -> View:
    """:func:`writable_view` of the tenant's pipeline named so, looked up in one statement."""
    view = get_pipeline_view(tenant, pipeline_name, view_name)
    _check_taking_changes(view.pipeline)
    return view


def _check_taking_changes(pipeline: Pipeline) -> None:
    """Raise 503 ``PipelineNotRunning`` if the pipeline is stopped."""
    if pipeline.status == PipelineStatus.STOPPED:
        raise PipelineNotRunning(
            pipeline.name, f"Pipeline '{pipeline.name}' is stopped; start it to push changes"
        )


def push_changes(
    view: View,
    changes: list[tuple[int, str]],
    before_commit: Callable[[PushResult], None] | None = None,
) -> PushResult:
    """Store a parsed batch in one transaction: the log and the Z-set, or nothing.

    ``before_commit`` runs inside that transaction with the result, e.g. to
    store the request's idempotent answer along with the batch.
    """
    inserts = sum(1 for weight, _text in changes if weight > 0)
    if not changes:
        return PushResult(0, 0, None, None, store.log_end(view.id))
    try:
        first, last = store.apply_changes(view.id, changes)
        # The view's connectors have work now: their workers wake at the commit.
        due.mark_view(view.id)
        result = PushResult(inserts, len(changes) - inserts, first, last, last)
        if before_commit is not None:
            before_commit(result)
        db.session.commit()
    except store.InvalidDelete as exc:
        db.session.rollback()
        raise bad_element(exc.index, "deletes a record the view does not hold") from None
    except BaseException:
        db.session.rollback()
        raise
    return result
