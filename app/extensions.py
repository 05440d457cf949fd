"""Extensions, created unbound here and bound to the app in the factory.

The database (Flask-SQLAlchemy, with the models' declarative base) and the
migrations (Flask-Migrate, bound by the whole app only: its ``db`` commands
need it, and the app a command runs in starts without importing Alembic). The
web side's extension, flask-smorest's ``Api``, lives in :mod:`app.web` with
the request handling it documents.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every model."""


db = SQLAlchemy(model_class=Base)


MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def init_app(app: Flask) -> None:
    """Bind the database to the app."""
    db.init_app(app)


def init_migrations(app: Flask) -> None:
    """Bind Flask-Migrate to the app, which adds the ``db`` commands."""
    from flask_migrate import Migrate

    Migrate(app, db, directory=str(MIGRATIONS_DIR))
