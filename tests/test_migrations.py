"""The migrations build exactly the schema that the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from app import create_app
from app.extensions import db


def _migrated_app(app_config):
    app = create_app(app_config)
    with app.app_context():
        upgrade()
    return app


def test_migrations_match_the_models(app_config):
    app = _migrated_app(app_config)
    with app.app_context(), db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == [], "models and migrations differ; run `flask --app wsgi db migrate`"


def test_migrations_downgrade_to_an_empty_database(app_config):
    app = _migrated_app(app_config)
    with app.app_context():
        downgrade(revision="base")
        tables = set(db.inspect(db.engine).get_table_names()) - {"alembic_version"}
    assert tables == set()
