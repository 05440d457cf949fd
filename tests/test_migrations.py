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


def test_records_stored_with_other_number_forms_become_one_record(app_config):
    import hashlib

    import sqlalchemy as sa

    from app.view_data import store

    app = create_app(app_config)
    with app.app_context():
        upgrade(revision="6b8e2f3d4c51")
        rows = [("10.0", 2), ("10", 1), ("1e1", 1), ("1.5", 1)]
        db.session.execute(
            sa.text(
                "INSERT INTO pipelines (id, tenant, name, description, status, incarnation, "
                "created_at, status_since) VALUES (:id, 'default', 'orders', '', 'stopped', 0, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"id": "0" * 32},
        )
        db.session.execute(
            sa.text("INSERT INTO views (id, pipeline_id, name, position) VALUES (1, :p, 't', 0)"),
            {"p": "0" * 32},
        )
        for number, weight in rows:
            text = '{"total":' + number + "}"
            db.session.execute(
                sa.text("INSERT INTO view_records VALUES (1, :k, :r, :w)"),
                {"k": hashlib.sha256(text.encode()).hexdigest(), "r": text, "w": weight},
            )
        db.session.commit()
        upgrade()
        found = {record["total"]: weight for record, weight in store.contents(1)}
        db.session.remove()
    assert found == {10: 4, 1.5: 1}


def test_each_view_log_learns_the_size_of_its_view(app_config):
    """view_logs.records is filled from what the views hold when it is added."""
    import sqlalchemy as sa

    app = create_app(app_config)
    with app.app_context():
        upgrade(revision="8e1a5b7c9d20")
        db.session.execute(
            sa.text(
                "INSERT INTO pipelines (id, tenant, name, description, status, incarnation, "
                "created_at, status_since) VALUES (:id, 'default', 'orders', '', 'stopped', 0, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"id": "0" * 32},
        )
        for view in (1, 2):
            db.session.execute(
                sa.text(
                    "INSERT INTO views (id, pipeline_id, name, position) VALUES (:v, :p, :n, 0)"
                ),
                {"v": view, "p": "0" * 32, "n": f"t{view}"},
            )
            db.session.execute(
                sa.text("INSERT INTO view_logs (view_id, last_seq) VALUES (:v, 9)"), {"v": view}
            )
        for key, weight in (("a", 2), ("b", 1)):
            db.session.execute(
                sa.text("INSERT INTO view_records VALUES (1, :k, '{}', :w)"),
                {"k": key * 64, "w": weight},
            )
        db.session.commit()
        upgrade()
        counts = dict(db.session.execute(sa.text("SELECT view_id, records FROM view_logs")).all())
        db.session.remove()
    assert counts == {1: 3, 2: 0}
