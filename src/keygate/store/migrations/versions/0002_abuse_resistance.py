"""Abuse resistance: replay modes, key expiry and rotation, timed lockout, nonce and throttle state.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from keygate.store.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("replay_mode", sa.String(16), nullable=False, server_default="compatible"))
        batch.add_column(sa.Column("last_nonce", sa.String(20), nullable=True))
        batch.add_column(sa.Column("expires_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("sealed_previous_secret", sa.LargeBinary, nullable=True))
        batch.add_column(sa.Column("previous_secret_expires_at", UTCDateTime, nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("locked_until", UTCDateTime, nullable=True))
    op.create_table(
        "used_nonces",
        sa.Column("api_key", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(128), primary_key=True),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_used_nonces_expires_at", "used_nonces", ["expires_at"])
    op.create_table(
        "throttle_counters",
        sa.Column("scope", sa.String(120), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_ends_at", UTCDateTime, nullable=False),
        sa.Column("blocked_until", UTCDateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("throttle_counters")
    op.drop_table("used_nonces")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("locked_until")
    with op.batch_alter_table("api_keys") as batch:
        for name in ("previous_secret_expires_at", "sealed_previous_secret", "expires_at", "last_nonce", "replay_mode"):
            batch.drop_column(name)
