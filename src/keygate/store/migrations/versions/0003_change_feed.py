"""Changes reach every process: the change log, secret serials, session epochs, operator actors.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from keygate.store.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ident", sa.String(200), nullable=False),
    )
    op.create_index("ix_changes_at", "changes", ["at"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("secret_serial", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("replay_floor", sa.String(20), nullable=True))
        batch.add_column(sa.Column("replay_floor_until", UTCDateTime, nullable=True))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("key_serial", sa.Integer, nullable=True))
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("sessions_valid_after", UTCDateTime, nullable=True))
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("actor", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("actor")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sessions_valid_after")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("key_serial")
    with op.batch_alter_table("api_keys") as batch:
        for name in ("replay_floor_until", "replay_floor", "secret_serial"):
            batch.drop_column(name)
    op.drop_index("ix_changes_at", "changes")
    op.drop_table("changes")
