"""Alembic environment: keygate runs migrations on a connection it hands over (see store.database)."""

from alembic import context

from keygate.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("keygate migrations run through `keygate migrate`, which supplies the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
