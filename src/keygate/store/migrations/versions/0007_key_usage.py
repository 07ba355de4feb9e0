"""Usage a user can see: requests and refusals per key and hour, and the address of a key's last use.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from keygate.store.tables import UTCDateTime

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_usage",
        sa.Column("api_key", sa.String(64), primary_key=True),
        sa.Column("hour", UTCDateTime, primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False, server_default="0"),
        sa.Column("refusals", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_key_usage_hour", "key_usage", ["hour"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("last_used_ip", sa.String(45), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("last_used_ip")
    op.drop_index("ix_key_usage_hour", "key_usage")
    op.drop_table("key_usage")
