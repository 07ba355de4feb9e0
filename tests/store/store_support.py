"""Fresh, empty databases for the store tests: an SQLite file, or a new PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from keygate.store.tables import metadata
from support import _psql, need, pg_available

DATABASES = ["sqlite", "postgresql"]


@contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of a new, empty database of ``kind``; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / 'keygate.db'}"
        return
    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"keygate_store_{uuid.uuid4().hex[:12]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_differences(connection: Connection) -> list[object]:
    """What Alembic autogenerate finds between the database's schema and ``keygate.store.tables``:
    columns, types, nullability, server defaults, indexes, unique and foreign keys."""
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(context, metadata))
