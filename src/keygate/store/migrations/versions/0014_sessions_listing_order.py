"""The sessions' owner index ends with the token hash, the listings' tie-break.

Why: a search of sessions by username pages them by (name, owner, issue time, token hash). Without
the hash in the index, SQLite sorted all of the matching user's live sessions for every page ("USE
TEMP B-TREE FOR RIGHT PART OF ORDER BY"): 0.1 s for a user with 100 000 sessions, growing with them.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_sessions_user_created", "sessions")
    op.create_index("ix_sessions_user_created", "sessions", ["user_id", "created_at", "token_hash"])


def downgrade() -> None:
    op.drop_index("ix_sessions_user_created", "sessions")
    op.create_index("ix_sessions_user_created", "sessions", ["user_id", "created_at"])
