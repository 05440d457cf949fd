"""Extensions, created unbound here and bound to the app in the factory.

The database (Flask-SQLAlchemy, with the models' declarative base) and the
migrations (Flask-Migrate). The web side's extension, flask-smorest's ``Api``,
lives in :mod:`app.web` with the request handling it documents.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every model."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()


MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def init_app(app: Flask) -> None:
    """Bind the database and the migrations to the app."""
    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
