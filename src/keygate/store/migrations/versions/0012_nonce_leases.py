"""Leases for in-process ``window`` claims (store/window_leases.py): which process decides a key's
claims in memory, until when, and up to which nonce it may accept them.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nonce_leases",
        sa.Column("api_key", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(32), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.Column("ceiling", sa.String(20), nullable=True),
        sa.Column("contended", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_nonce_leases_holder", "nonce_leases", ["holder"])


def downgrade() -> None:
    op.drop_index("ix_nonce_leases_holder", "nonce_leases")
    op.drop_table("nonce_leases")
