"""Extensions, created unbound here and bound to the app in the factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask, Request
from flask_migrate import Migrate
from flask_smorest import Api as _SmorestApi
from flask_smorest import Blueprint as _SmorestBlueprint
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import UnsupportedMediaType

from app.schemas import ErrorSchema


class Base(DeclarativeBase):
    """Declarative base of every model."""


class _Parser(FlaskParser):
    """Request parser whose validation failures answer 400, not 422."""

    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req: Request, schema: Any) -> Any:
        """Refuse a body that is not JSON (webargs would read it as no body at all)."""
        if not is_json_request(req) and (req.content_length or req.mimetype):
            raise UnsupportedMediaType(
                "Send the body as JSON, with 'Content-Type: application/json'"
            )
        return super().load_json(req, schema)


class Blueprint(_SmorestBlueprint):
    """flask-smorest's Blueprint, validating with the service's parser.

    flask-smorest takes the parser from the blueprint, so every resource's
    blueprint is built from this class.
    """

    ARGUMENTS_PARSER = _Parser()


class Api(_SmorestApi):
    """flask-smorest's Api with the service's own error body.

    The error handlers live in :mod:`app.errors`; this class only documents
    their body and keeps flask-smorest from registering its own handler.
    """

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self) -> None:
        """Leave error handling to :mod:`app.errors`."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = Api()


MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def init_app(app: Flask) -> None:
    """Bind the extensions to the app."""
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    api.init_app(app)
