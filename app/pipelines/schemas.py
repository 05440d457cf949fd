"""Request and response shapes of pipelines and views."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from app.pipelines.models import NAME_FIELD_HELP, NAME_PATTERN, PipelineStatus, is_valid_name
from app.schemas import PageQuery


def _check_name(value: str) -> None:
    """Refuse a value that is not a whole name (``"orders\\n"`` is not one)."""
    if not is_valid_name(value):
        raise ma.ValidationError(NAME_FIELD_HELP)


def name_field(metadata: dict | None = None, **kwargs: object) -> ma.fields.String:
    """A name as the contract allows them."""
    return ma.fields.String(
        validate=_check_name,
        metadata={"pattern": NAME_PATTERN, "description": NAME_FIELD_HELP, **(metadata or {})},
        **kwargs,
    )


# Free text up to 10,000 characters; a NUL is refused (PostgreSQL cannot store one).
DESCRIPTION = [
    validate.Length(max=10_000),
    validate.Regexp(r"^[^\x00]*$", error="The description must not hold a NUL character."),
]


class PipelineCreate(ma.Schema):
    """Body of ``POST /v0/pipelines``."""

    class Meta:
        unknown = ma.RAISE

    name = name_field(required=True, metadata={"example": "orders"})
    description = ma.fields.String(load_default="", validate=DESCRIPTION)
    views = ma.fields.List(
        name_field(),
        load_default=list,
        validate=validate.Length(max=1000),
        metadata={"uniqueItems": True},
    )


class PipelineListQuery(PageQuery):
    """Query of ``GET /v0/pipelines``."""

    status = ma.fields.String(
        validate=validate.OneOf(PipelineStatus.ALL),
        metadata={
            "enum": list(PipelineStatus.ALL),
            "description": "Only pipelines in this status.",
        },
    )
    # A pipeline's name (the previous page's last): anything else, a NUL byte
    # included, is refused (400) before it reaches the database.
    after = name_field(
        metadata={
            "description": "List the pipelines named after this one (the previous page's last)."
        },
    )


class PipelineUpdate(ma.Schema):
    """Body of ``PATCH /v0/pipelines/{pipeline_name}``."""

    class Meta:
        unknown = ma.RAISE

    description = ma.fields.String(validate=DESCRIPTION)
    views = ma.fields.List(
        name_field(), validate=validate.Length(max=1000), metadata={"uniqueItems": True}
    )


class PipelineOut(ma.Schema):
    """A pipeline as the API shows it."""

    name = ma.fields.String(required=True)
    id = ma.fields.UUID(required=True)
    tenant = ma.fields.String(required=True)
    description = ma.fields.String(required=True)
    status = ma.fields.String(
        required=True,
        validate=validate.OneOf(PipelineStatus.ALL),
        metadata={"enum": list(PipelineStatus.ALL)},
    )
    incarnation = ma.fields.Integer(required=True)
    views = ma.fields.List(ma.fields.String(), required=True, attribute="view_names")
    created_at = ma.fields.AwareDateTime(required=True)
    status_since = ma.fields.AwareDateTime(required=True)


class ViewCreate(ma.Schema):
    """Body of ``POST /v0/pipelines/{pipeline_name}/views``."""

    class Meta:
        unknown = ma.RAISE

    name = name_field(required=True, metadata={"example": "totals"})


class ViewOut(ma.Schema):
    """An output view."""

    name = ma.fields.String(required=True)
