"""The migrations create exactly the tables the code declares (``keygate.store.tables``).

A column, type, index, foreign key or server default that a migration forgot, or one the tables lost,
shows up here as an Alembic autogenerate difference, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy import text
from store_support import schema_differences

from keygate.store.database import MIGRATIONS, create_engine, migrate


def test_the_migrations_have_one_head() -> None:
    """Migrations written in parallel must be chained into one line, or ``upgrade head`` refuses to run."""
    heads = ScriptDirectory(str(MIGRATIONS)).get_heads()
    assert len(heads) == 1, f"several migration heads: {heads}"


async def test_a_migrated_empty_database_matches_the_declared_tables(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        await migrate(engine)
        async with engine.connect() as conn:
            differences = await conn.run_sync(schema_differences)
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    finally:
        await engine.dispose()
    assert differences == []
    assert version == ScriptDirectory(str(MIGRATIONS)).get_current_head()


async def test_migrating_twice_changes_nothing(empty_database_url: str) -> None:
    """Every start runs the migrations: on an up-to-date database that is a no-op."""
    engine = create_engine(empty_database_url)
    try:
        await migrate(engine)
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(schema_differences) == []
    finally:
        await engine.dispose()


def test_the_revision_the_cli_checks_is_the_migrations_head() -> None:
    """Commands other than init/serve/migrate compare the database's revision with ``HEAD_REVISION``
    without loading Alembic: it must be the migrations' head, and ``REVISIONS`` their chain. A new
    migration fails here until it is added to ``keygate.store.database.REVISIONS``."""
    from keygate.store.database import HEAD_REVISION, REVISIONS

    script = ScriptDirectory(str(MIGRATIONS))
    chain = tuple(reversed([revision.revision for revision in script.walk_revisions()]))
    assert REVISIONS == chain
    assert HEAD_REVISION == script.get_current_head()
