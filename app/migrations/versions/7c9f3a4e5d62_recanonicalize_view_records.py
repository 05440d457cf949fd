"""re-canonicalize stored records: equal JSON numbers are one record

Records stored before numbers had one canonical form keep texts such as
{"total":10.0}, which no longer equal {"total":10} as pushed now, so a delete
of such a record would be refused. This rewrites each view's contents in the
canonical form (an integral double below 1e21 in magnitude becomes an integer)
and merges the weights of records that turn out equal. The rule is copied here,
not imported, so that this migration keeps meaning what it meant.

Revision ID: 7c9f3a4e5d62
Revises: 6b8e2f3d4c51
Create Date: 2026-11-29 14:55:00

"""
import hashlib
import json

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c9f3a4e5d62'
down_revision = '6b8e2f3d4c51'
branch_labels = None
depends_on = None

PAGE = 1000


def _normalize(value):
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return int(value)
        return value
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return {k: _normalize(v) for k, v in value.items()}


def _canonical(text):
    return json.dumps(
        _normalize(json.loads(text)), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def upgrade():
    bind = op.get_bind()
    records = sa.table(
        'view_records',
        sa.column('view_id', sa.Integer),
        sa.column('key', sa.String),
        sa.column('record', sa.Text),
        sa.column('weight', sa.BigInteger),
    )
    last = None
    while True:
        query = sa.select(records.c.view_id, records.c.key, records.c.record, records.c.weight)
        if last is not None:
            query = query.where(sa.tuple_(records.c.view_id, records.c.key) > sa.tuple_(*last))
        rows = bind.execute(query.order_by(records.c.view_id, records.c.key).limit(PAGE)).all()
        if not rows:
            return
        for view_id, key, text, weight in rows:
            new_text = _canonical(text)
            if new_text == text:
                continue
            new_key = hashlib.sha256(new_text.encode('utf-8')).hexdigest()
            same = sa.and_(records.c.view_id == view_id, records.c.key == new_key)
            if bind.execute(sa.select(records.c.weight).where(same)).first() is not None:
                bind.execute(records.update().where(same).values(weight=records.c.weight + weight))
                bind.execute(
                    records.delete().where(records.c.view_id == view_id, records.c.key == key)
                )
            else:
                bind.execute(
                    records.update()
                    .where(records.c.view_id == view_id, records.c.key == key)
                    .values(key=new_key, record=new_text)
                )
        last = (rows[-1][0], rows[-1][1])


def downgrade():
    # The old texts are not kept; the canonical ones read the same way.
    pass
