"""Engine creation, schema migrations (Alembic, run on keygate's own connection), and the cheap check
that a database's schema is the one this keygate was written for.

Only ``migrate()`` loads Alembic (and its migration scripts): ``keygate init``, ``serve`` and ``migrate``
apply migrations; every other command reads the schema's revision with one query
(``require_current_schema``) and compares it with ``HEAD_REVISION``, known here without Alembic.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from keygate.store.outage import OutageAwareEngine, is_outage
from keygate.store.tables import users
from keygate.telemetry import database_error

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# Every revision in migrations/versions, oldest first, as Alembic chains them (down_revision); the
# last is the head. tests/store/test_schema_revision.py checks this against the migration scripts, so
# a new migration that is not listed here fails the tests.
REVISIONS = ("0001", "0002", "0003", "0005", "0006", "0004", "0007", "0008", "0009", "0010", "0011", "0012", "0013", "0014")
HEAD_REVISION = REVISIONS[-1]
CONNECT_TIMEOUT_SECONDS = 2.0
STATEMENT_TIMEOUT_SECONDS = 10.0


def dialect_insert(dialect_name: str) -> Any:
    """The ``insert`` of the dialect (PostgreSQL's or SQLite's, for ``ON CONFLICT``), imported when first
    needed: a CLI command on SQLite then never loads the PostgreSQL dialect (about 20 ms of its start)."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    return sqlite_insert


def create_engine(url: str, connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
                  statement_timeout: float = STATEMENT_TIMEOUT_SECONDS) -> AsyncEngine:
    """The engine every repository uses (an ``OutageAwareEngine``: an outage raises ``DatabaseUnavailable``).

    A request waits at most ``connect_timeout`` for a free pooled connection and as long again for a
    new one, and on PostgreSQL at most ``statement_timeout`` for one statement: without that bound a
    database behind a silent network (no reset, no answer) holds a request, and its pooled
    connection's liveness ping, forever.
    """
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            # The database holds password hashes and sealed secrets: only the service's user reads it.
            # SQLite gives its -wal and -shm files the database file's mode.
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            Path(path).touch(mode=0o600, exist_ok=True)
        # SQLite's own busy timeout stays 30 s: a write waits that long for another process's lock.
        pooled = {"pool_timeout": connect_timeout} if path and path != ":memory:" else {}  # memory: one static connection
        engine = create_async_engine(url, connect_args={"timeout": 30}, **pooled)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return _counted(OutageAwareEngine(engine.sync_engine))
    engine = create_async_engine(
        url, pool_size=10, max_overflow=10, pool_pre_ping=True, pool_timeout=connect_timeout,
        connect_args=_pg_timeouts(url.split("://", 1)[0], connect_timeout, statement_timeout),
    )
    return _counted(OutageAwareEngine(engine.sync_engine))


def _pg_timeouts(driver: str, connect_timeout: float, statement_timeout: float | None) -> dict[str, float | None]:
    if "asyncpg" not in driver:
        return {}
    return {"timeout": connect_timeout, "command_timeout": statement_timeout}


async def ping(engine: AsyncEngine) -> None:
    """One cheap read of keygate's own schema: proves the database answers and holds keygate's tables."""
    async with engine.connect() as conn:
        await conn.execute(select(users.c.user_id).limit(1))


def _counted(engine: AsyncEngine) -> AsyncEngine:
    """Count every error the driver raises (failed connections included) in the metrics."""

    @event.listens_for(engine.sync_engine, "handle_error")
    def _count(context: ExceptionContext) -> None:
        database_error(context.sqlalchemy_exception or context.original_exception)

    # A refused or timed-out connection is raised by the driver as it is, without handle_error.
    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Any, _record: object, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception:
            database_error(None)
            raise

    return engine


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    import warnings

    from alembic import command
    from sqlalchemy.exc import SAWarning

    with warnings.catch_warnings():
        # SQLite's batch migrations reflect a table to copy it; SQLAlchemy cannot reflect expression
        # indexes (lower(username)) and says so on stderr, a line that is not the server's JSON log.
        # The migrations re-create those indexes themselves.
        warnings.filterwarnings("ignore", message="Skipped unsupported reflection", category=SAWarning)
        command.upgrade(_alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; safe to run on every start.

    On PostgreSQL it runs on a connection of its own without the statement timeout, which a long
    migration of a large table may exceed.
    """
    if engine.dialect.name != "postgresql":
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return
    own = OutageAwareEngine(create_async_engine(
        engine.url, poolclass=NullPool, connect_args=_pg_timeouts(engine.url.drivername, CONNECT_TIMEOUT_SECONDS, None)
    ).sync_engine)
    try:
        async with own.begin() as conn:
            await conn.run_sync(_upgrade)
    finally:
        await own.dispose()


class SchemaNotCurrent(Exception):
    """The database's schema is not the one this keygate needs; the message says how to fix it, in one line."""

    def __init__(self, found: tuple[str, ...]) -> None:
        self.found = found
        if not found:
            message = "the database holds no keygate schema yet: run `keygate init` to set it up"
        elif len(found) == 1 and found[0] in REVISIONS:
            message = (f"the database schema is at revision {found[0]}, this keygate needs {HEAD_REVISION}: "
                       "run `keygate migrate` (keygate serve and keygate init migrate too)")
        else:
            message = (f"the database schema is at revision {', '.join(found)}, which this keygate does not know "
                       f"(it needs {HEAD_REVISION}): a newer keygate migrated it; use that version")
        super().__init__(message)


def _read_revision(connection: Connection) -> tuple[str, ...]:
    try:
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError as exc:
        if is_outage(exc):
            raise
        connection.rollback()  # (PostgreSQL: the failed statement aborted the transaction)
        if connection.dialect.has_table(connection, "alembic_version"):
            raise
        return ()  # never migrated
    return tuple(sorted(rows))


async def schema_revision(engine: AsyncEngine) -> tuple[str, ...]:
    """The revisions Alembic recorded in the database (one, normally; none: never migrated). One query."""
    async with engine.connect() as conn:
        return await conn.run_sync(_read_revision)


async def require_current_schema(engine: AsyncEngine) -> None:
    """Raise ``SchemaNotCurrent`` unless the database's schema is at ``HEAD_REVISION``; applies nothing."""
    found = await schema_revision(engine)
    if found != (HEAD_REVISION,):
        raise SchemaNotCurrent(found)
