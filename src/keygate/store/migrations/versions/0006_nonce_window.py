"""The ``window`` replay mode: a key's floor, style and count of remembered nonces.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("nonce_floor", sa.String(20), nullable=True))
        batch.add_column(sa.Column("nonce_spread", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("nonce_count", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for name in ("nonce_count", "nonce_spread", "nonce_floor"):
            batch.drop_column(name)
