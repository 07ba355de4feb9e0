"""Operator listings page through keys and sessions by owner: one index on (user_id, created_at) each.

It replaces the index on ``user_id`` alone (which it also serves), so writes keep one index per table
for the owner, and a page of every user's keys or sessions, or of one user's, is read in index order
(``ORDER BY user_id, created_at LIMIT``) rather than sorted from the whole table.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_api_keys_user_created", "api_keys", ["user_id", "created_at"])
    op.drop_index("ix_api_keys_user_id", "api_keys")
    op.create_index("ix_sessions_user_created", "sessions", ["user_id", "created_at"])
    op.drop_index("ix_sessions_user_id", "sessions")


def downgrade() -> None:
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.drop_index("ix_sessions_user_created", "sessions")
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.drop_index("ix_api_keys_user_created", "api_keys")
