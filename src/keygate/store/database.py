"""Engine creation and schema migrations (Alembic, run on keygate's own connection)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keygate.telemetry import database_error

MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            # The database holds password hashes and sealed secrets: only the service's user reads it.
            # SQLite gives its -wal and -shm files the database file's mode.
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            Path(path).touch(mode=0o600, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return _counted(engine)
    return _counted(create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True))


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
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; safe to run on every start."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
