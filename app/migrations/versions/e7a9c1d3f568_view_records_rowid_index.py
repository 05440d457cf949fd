"""view_records: on SQLite, an index on view_id, for snapshots read in rowid order

A snapshot reads a view's Z-set page by page (app.delivery.reader). On SQLite
it pages in the table's own rowid order through this index (view_id, and the
rowid every SQLite index ends with), instead of in key order through the
primary key, which fetched each row from a random place of the table.
PostgreSQL pages by the primary key and gets no index.

Revision ID: e7a9c1d3f568
Revises: d2f4b6c8e013
Create Date: 2026-12-07 16:30:00

"""
from alembic import op

# revision identifiers, used by Alembic.
revision = "e7a9c1d3f568"
down_revision = "d2f4b6c8e013"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        op.create_index("ix_view_records_view_rowid", "view_records", ["view_id"])


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_view_records_view_rowid", table_name="view_records")
