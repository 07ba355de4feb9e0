"""Signature v2 nonces in a table of their own (``signature_nonces``), out of ``used_nonces``.

Why: a ``window`` key forgets its remembered nonces in ``used_nonces`` in an order (the smallest
first, or once random-style the oldest first) that took the key's Signature v2 nonces along (they
expire within seconds: the oldest of all), so a captured v2 request could be replayed within its
window on a key that also signs APEX calls. The v2 nonces already claimed move here, so none of
them is accepted again after the upgrade.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from keygate.store.tables import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signature_nonces",
        sa.Column("api_key", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(128), primary_key=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_signature_nonces_expires_at", "signature_nonces", ["expires_at"])
    op.execute("INSERT INTO signature_nonces (api_key, nonce, expires_at) "
               "SELECT api_key, nonce, expires_at FROM used_nonces WHERE nonce LIKE 'v2:%'")
    op.execute("DELETE FROM used_nonces WHERE nonce LIKE 'v2:%'")


def downgrade() -> None:
    op.execute("INSERT INTO used_nonces (api_key, nonce, expires_at) "
               "SELECT api_key, nonce, expires_at FROM signature_nonces")
    op.drop_index("ix_signature_nonces_expires_at", "signature_nonces")
    op.drop_table("signature_nonces")
