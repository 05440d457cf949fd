"""admin role and key expiry: api_keys.role may be 'admin', api_keys.expires_at

Revision ID: 5a7d1e2c3b40
Revises: 3f1c2b7d9e10
Create Date: 2026-11-30 10:00:00

"""
from alembic import op
import sqlalchemy as sa

import app.database


# revision identifiers, used by Alembic.
revision = '5a7d1e2c3b40'
down_revision = '3f1c2b7d9e10'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', app.database.UTCDateTime(timezone=True), nullable=True))
        batch_op.drop_constraint('ck_api_keys_role', type_='check')
        batch_op.create_check_constraint('ck_api_keys_role', "role IN ('read', 'write', 'admin')")


def downgrade():
    api_keys = sa.table(
        'api_keys',
        sa.column('role', sa.String),
        sa.column('expires_at', app.database.UTCDateTime(timezone=True)),
    )
    # The old schema cannot keep an expiry: such a key would never expire there, so it goes.
    op.execute(api_keys.delete().where(api_keys.c.expires_at.isnot(None)))
    # Before this revision, 'write' was the strongest role (and managed keys).
    op.execute(api_keys.update().where(api_keys.c.role == 'admin').values(role='write'))

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_constraint('ck_api_keys_role', type_='check')
        batch_op.create_check_constraint('ck_api_keys_role', "role IN ('read', 'write')")
        batch_op.drop_column('expires_at')
