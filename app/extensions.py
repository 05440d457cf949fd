"""Extensions, created unbound here and bound to the app in the factory."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask_migrate import Migrate
from flask_smorest import Api as _SmorestApi
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from webargs.flaskparser import FlaskParser

from app.schemas import ErrorSchema


class Base(DeclarativeBase):
    """Declarative base of every model."""


class _Parser(FlaskParser):
    """Request parser whose validation failures answer 400, not 422."""

    DEFAULT_VALIDATION_STATUS = 400


class Api(_SmorestApi):
    """flask-smorest's Api with the service's own error body.

    The error handlers live in :mod:`app.errors`; this class only documents
    their body and keeps flask-smorest from registering its own handler.
    """

    ERROR_SCHEMA = ErrorSchema
    ARGUMENTS_PARSER = _Parser()

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
