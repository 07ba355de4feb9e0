"""Key types: ``hmac`` (a sealed secret, as before) or ``ed25519`` (a public key, no secret).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("key_type", sa.String(16), nullable=False, server_default="hmac"))
        batch.add_column(sa.Column("public_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("previous_public_key", sa.String(64), nullable=True))
        batch.alter_column("sealed_secret", existing_type=sa.LargeBinary, nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM api_keys WHERE key_type <> 'hmac'")
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("sealed_secret", existing_type=sa.LargeBinary, nullable=False)
        batch.drop_column("previous_public_key")
        batch.drop_column("public_key")
        batch.drop_column("key_type")
