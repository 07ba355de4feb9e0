"""The order in which a ``window`` key forgets its nonces, as indexes: the smallest first (by length,
then text) while increasing-style, the oldest first once random-style. A full key forgets one nonce per
claim; without these a batch of claims sorted all of the key's remembered nonces (up to 4096) to find it.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_used_nonces_key_order", "used_nonces", ["api_key", sa.text("length(nonce)"), "nonce", "expires_at"])
    op.create_index("ix_used_nonces_key_expiry", "used_nonces", ["api_key", "expires_at", "nonce"])


def downgrade() -> None:
    op.drop_index("ix_used_nonces_key_expiry", "used_nonces")
    op.drop_index("ix_used_nonces_key_order", "used_nonces")
