"""Align the migrated schema with ``keygate.store.tables``: no server default on ``api_keys.replay_mode``.

0002 gave the new NOT NULL column a server default so that existing rows got a value; the code always
writes the column itself and the tables declare no server default, so the migrations check
(tests/store/test_schema_migrations.py) found the two apart. On SQLite this rebuilds ``api_keys``
(batch mode copies every row).

Revision ID: 0005
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("replay_mode", existing_type=sa.String(16), existing_nullable=False, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("replay_mode", existing_type=sa.String(16), existing_nullable=False, server_default="compatible")
