"""Abuse limits: usernames unique without regard to case, the last TOTP step, trust marks.

Existing usernames that differ only in case (``alice`` and ``ALICE``): the oldest (lowest user id)
keeps its name; each later one is renamed ``<name>-<user_id>`` (cut to fit 64 characters), which the
operator sees in ``keygate user list`` and the audit trail (``user.rename`` rows written here).

Revision ID: 0004
Revises: 0002 (the lead re-chains after 0003)
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from keygate.store.tables import UTCDateTime

revision = "0004"
down_revision = "0006"
branch_labels = None
depends_on = None


def _rename_case_duplicates() -> None:
    bind = op.get_bind()
    users = sa.table("users", sa.column("user_id", sa.Integer), sa.column("username", sa.String))
    audit = sa.table(
        "audit_events", sa.column("at", UTCDateTime), sa.column("action", sa.String), sa.column("outcome", sa.String),
        sa.column("reason", sa.String), sa.column("subject_user_id", sa.Integer), sa.column("detail", sa.Text),
    )
    rows = bind.execute(sa.select(users.c.user_id, users.c.username).order_by(users.c.user_id)).all()
    taken = {name.lower() for _, name in rows}
    seen: set[str] = set()
    for user_id, name in rows:
        if name.lower() not in seen:
            seen.add(name.lower())
            continue
        suffix = f"-{user_id}"
        new = name[: 64 - len(suffix)] + suffix
        while new.lower() in taken:
            suffix += "x"
            new = name[: 64 - len(suffix)] + suffix
        taken.add(new.lower())
        seen.add(new.lower())
        bind.execute(sa.update(users).where(users.c.user_id == user_id).values(username=new))
        bind.execute(sa.insert(audit).values(
            at=datetime.now(timezone.utc), action="user.rename", outcome="success",
            reason="username differed from an older one only in case", subject_user_id=user_id,
            detail=f"{name} -> {new}",
        ))


def upgrade() -> None:
    _rename_case_duplicates()
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("last_totp_step", sa.Integer, nullable=True))
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    op.create_table(
        "trust_marks",
        sa.Column("mark", sa.String(120), primary_key=True),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_trust_marks_expires_at", "trust_marks", ["expires_at"])


def downgrade() -> None:
    op.drop_table("trust_marks")
    op.drop_index("uq_users_username_lower", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("last_totp_step")
