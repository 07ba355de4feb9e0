"""The engine tells a database outage (503) from a bug (500), on real SQLite and PostgreSQL errors."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keygate.domain.errors import DatabaseUnavailable
from keygate.store.database import create_engine
from keygate.store.outage import OutageAwareEngine
from support import PG_ADMIN_DSN, free_port, need, pg_available


def _sqlite(path: Path, busy_timeout: float = 0.2, **kw: object) -> AsyncEngine:
    return OutageAwareEngine(create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": busy_timeout}, **kw).sync_engine)


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = _sqlite(tmp_path / "t.db")
    async with engine.begin() as conn:
        await conn.execute(text("PRAGMA journal_mode=WAL"))
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    yield engine
    await engine.dispose()


async def test_a_locked_sqlite_database_is_unavailable(sqlite_engine: AsyncEngine, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            async with sqlite_engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (id) VALUES (1)"))
        assert isinstance(caught.value.__cause__, OperationalError)
        assert caught.value.http_status == 503 and caught.value.errorcode == 102
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with sqlite_engine.begin() as conn:  # and it works again once the lock is gone
        await conn.execute(text("INSERT INTO t (id) VALUES (1)"))


@pytest.mark.parametrize("sql, error", [
    ("SELECT * FROM no_such_table", OperationalError),  # SQLite reports a schema fault as "operational"
    ("SELEC 1", OperationalError),
    ("INSERT INTO t (id) VALUES (7), (7)", IntegrityError),
])
async def test_sql_faults_are_not_outages(sqlite_engine: AsyncEngine, sql: str, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        async with sqlite_engine.begin() as conn:
            await conn.execute(text(sql))
    assert not isinstance(caught.value, DatabaseUnavailable)


async def test_a_python_error_inside_a_transaction_passes_through(sqlite_engine: AsyncEngine) -> None:
    with pytest.raises(KeyError):
        async with sqlite_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            {}["missing"]


async def test_waiting_for_a_free_pooled_connection_is_bounded(tmp_path: Path) -> None:
    engine = _sqlite(tmp_path / "p.db", pool_size=1, max_overflow=0, pool_timeout=0.3)
    try:
        async with engine.connect():
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                async with engine.connect():
                    pass
            assert time.monotonic() - started < 1.5
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url() -> str:
    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    return PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)


async def test_postgresql_unreachable_fails_fast(pg_url: str) -> None:
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test", connect_timeout=1)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert isinstance(caught.value.__cause__, OSError)
        assert time.monotonic() - started < 1.5
    finally:
        await engine.dispose()


async def test_postgresql_refusing_the_connection_is_unavailable(pg_url: str) -> None:
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/no_such_db_{uuid.uuid4().hex[:6]}")
    try:
        with pytest.raises(DatabaseUnavailable):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def test_postgresql_faults_are_not_outages(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        with pytest.raises(ProgrammingError):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT * FROM no_such_table_here"))
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TEMP TABLE u (id INT PRIMARY KEY)"))
                await conn.execute(text("INSERT INTO u VALUES (1), (1)"))
    finally:
        await engine.dispose()


async def test_postgresql_statement_timeout_is_unavailable(pg_url: str) -> None:
    engine = create_engine(pg_url, statement_timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 2
        async with engine.connect() as conn:  # the pool recovers by itself
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
