"""Schemas shared by every resource."""

from __future__ import annotations

import marshmallow as ma


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
