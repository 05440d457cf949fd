"""Schemas shared by every resource."""

from __future__ import annotations

from urllib.parse import urlencode

import marshmallow as ma
from flask import request
from marshmallow import validate

# Lists answer at most this many items per page (the limit query parameter).
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class ErrorSchema(ma.Schema):
    """The body of every error response."""

    message = ma.fields.String(required=True, metadata={"description": "For humans."})
    error_code = ma.fields.String(
        required=True,
        metadata={
            "description": "Stable CamelCase name of the error.",
            "example": "UnknownPipelineName",
        },
    )
    details = ma.fields.Dict(
        required=True, metadata={"description": "Structured facts about the error; may be empty."}
    )


def documents_errors(blp, responses: dict[int, str]):
    """Document the error responses of a route, all with the error body.

    ``blp`` is the route's flask-smorest blueprint; ``responses`` maps each
    status code the route can answer with to what it means there.
    """

    def decorator(func):
        for code, description in sorted(responses.items(), reverse=True):
            func = blp.alt_response(code, schema=ErrorSchema, description=description)(func)
        return func

    return decorator


def documented_only(*decorators):
    """Apply flask-smorest decorators to a view for the OpenAPI document only.

    The document is built from what the decorators record on the function
    (``_apidoc``), exactly as if they wrapped it; at run time the view is
    called bare, so it parses its own arguments and returns a finished
    response. For the hottest routes, where argument parsing and schema
    dumping would cost more than the work itself. Decorators are listed
    outermost first, as they would be stacked.
    """

    def decorator(func):
        documented = func
        for apply in reversed(decorators):
            documented = apply(documented)
        func._apidoc = documented._apidoc
        return func

    return decorator


class PageQuery(ma.Schema):
    """Query of a paged list: ``limit`` items after the cursor ``after``."""

    class Meta:
        # A misspelt parameter (?limt=5) is refused, not silently ignored.
        unknown = ma.RAISE

    limit = ma.fields.Integer(
        load_default=DEFAULT_PAGE_SIZE,
        validate=validate.Range(min=1, max=MAX_PAGE_SIZE),
        metadata={"description": f"Items per page (1 to {MAX_PAGE_SIZE})."},
    )
    after = ma.fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={
            "description": "Where the page starts: the cursor of the previous page's "
            "'next' link (the Link header). Omit it for the first page."
        },
    )


def page_headers(cursor: str | None, limit: int) -> dict[str, str]:
    """The ``Link`` header to the next page (RFC 8288), when there is one.

    The link repeats the request's query with ``after`` set to ``cursor``.
    """
    if cursor is None:
        return {}
    query = {key: value for key, value in request.args.items() if key != "after"}
    query.update(limit=str(limit), after=cursor)
    return {"Link": f'<{request.path}?{urlencode(query)}>; rel="next"'}


LINK_HEADER_DOC = {
    "Link": {
        "description": 'The next page, as <URL>; rel="next" (RFC 8288); absent on the last page.',
        "schema": {"type": "string"},
    }
}


class StrictBoolean(ma.fields.Boolean):
    """A JSON ``true`` or ``false``, nothing else: ``0``, ``1`` or ``"yes"`` are refused.

    marshmallow's Boolean takes any of those (and ``0 in {False}`` holds in
    Python), while the document says ``boolean``.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value
