"""The change log: how a change made by one process reaches the caches of every other.

Every change that other processes must see (a key edited, rotated or deleted, a user locked, a
session ended, ...) writes a row ``(seq, kind, ident)`` to the ``changes`` table **in the change's
own transaction**. So the row exists exactly when the change does: a process that dies after the
commit has still told everyone, and one that dies before it has changed nothing.

Each server process follows the log with a ``ChangeListener`` and applies every new row to its
caches (``Coherence.apply``):

- SQLite: it reads ``SELECT ... WHERE seq > :last`` every ``SQLITE_POLL_SECONDS`` (0.1 s). The
  query walks the primary key from the last row seen: an empty answer costs a few microseconds.
- PostgreSQL: the writing transaction also runs ``pg_notify('keygate_changes', '')``, which
  PostgreSQL delivers at commit, to every connection that ``LISTEN``s, only if the transaction
  commits. The listener then reads the new rows at once; it also reads every
  ``PG_POLL_SECONDS`` (0.5 s), so a notification lost with a connection costs at most that.

Redis, where configured, is not in this path: a publish after the commit is lost when the publisher
dies in between; the row in the log is not.

A listener that cannot read the log cannot know what it missed. After ``STALE_AFTER_SECONDS``
without a successful read it reports itself stale, and authentication answers 503 until it reads
again; it then applies everything it missed (the log keeps ``RETAIN_SECONDS`` of rows), or, if the
rows it missed were purged, clears every cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keygate.store.tables import changes

log = logging.getLogger("keygate.changes")

CHANNEL = "keygate_changes"
SQLITE_POLL_SECONDS = 0.1
PG_POLL_SECONDS = 0.5
STALE_AFTER_SECONDS = 0.75  # a poll late by this much may have missed a change: fail closed
RETAIN_SECONDS = 3600
MAX_IDENT = 200

Change = tuple[str, str]  # (kind, ident)


async def record(conn: AsyncConnection, items: Sequence[Change]) -> None:
    """Write ``items`` to the log inside the caller's transaction (and wake PostgreSQL listeners)."""
    if not items:
        return
    now = datetime.now(timezone.utc)
    await conn.execute(insert(changes), [{"at": now, "kind": k, "ident": i[:MAX_IDENT]} for k, i in items])
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class ChangeListener:
    """Follows the change log and hands every new row to ``apply``; ``reset`` when rows were lost."""

    def __init__(self, engine: AsyncEngine, apply: Callable[[str, str], None], reset: Callable[[], None]) -> None:
        self._engine = engine
        self._apply = apply
        self._reset = reset
        self._pg = engine.dialect.name == "postgresql"
        self._last = 0
        self._read_at = 0.0  # monotonic time of the last successful read
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost = False  # a read failed: what happened meanwhile must be caught up (or caches cleared)

    unavailable = ("Authentication is temporarily unavailable: this server cannot read the database's change log, so "
                   "it cannot be sure its caches are current; retry shortly")

    @property
    def fresh(self) -> bool:
        """Whether every change committed more than ``STALE_AFTER_SECONDS`` ago has been applied here."""
        return time.monotonic() - self._read_at < STALE_AFTER_SECONDS + (PG_POLL_SECONDS if self._pg else SQLITE_POLL_SECONDS)

    async def start(self) -> None:
        """Begin after the current end of the log (this process's caches are empty), then follow it."""
        async with self._engine.connect() as conn:
            self._last = int((await conn.execute(select(func.coalesce(func.max(changes.c.seq), 0)))).scalar_one())
        self._read_at = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="keygate-change-listener")

    async def _run(self) -> None:
        listen = asyncio.create_task(self._listen()) if self._pg else None
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), PG_POLL_SECONDS if self._pg else SQLITE_POLL_SECONDS)
                except TimeoutError:
                    pass
                self._wake.clear()
                await self.catch_up()
        finally:
            if listen is not None:
                listen.cancel()

    async def catch_up(self) -> None:
        """Apply every row after the last one seen. Safe to call at any time (for example in tests)."""
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(
                    select(changes.c.seq, changes.c.kind, changes.c.ident).where(changes.c.seq > self._last).order_by(changes.c.seq)
                )).all()
                if self._lost:
                    oldest = (await conn.execute(select(func.min(changes.c.seq)))).scalar_one()
                    if oldest is None or oldest > self._last + 1:
                        self._reset()  # rows we never saw were purged: forget everything instead
        except Exception as exc:  # the database is unreachable: stay stale (503) until it answers
            if not self._lost:
                log.warning("cannot read the change log (%s); authentication fails closed until it can", type(exc).__name__)
            self._lost = True
            return
        for seq, kind, ident in rows:
            self._apply(kind, ident)
            self._last = seq
        self._lost = False
        self._read_at = time.monotonic()

    async def _listen(self) -> None:
        """PostgreSQL: wake the reader on every NOTIFY; reconnect when the connection drops."""
        import asyncpg

        url = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(url, timeout=5)
                await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
                self._wake.set()  # read what was committed while we were not listening
                while not conn.is_closed():
                    await asyncio.sleep(1.0)
                    await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lost the PostgreSQL change notifications (%s); polling every %ss", type(exc).__name__, PG_POLL_SECONDS)
                await asyncio.sleep(1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


async def purge(engine: AsyncEngine) -> None:
    """Drop rows older than ``RETAIN_SECONDS`` (a listener that was away longer clears its caches)."""
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=RETAIN_SECONDS)
    async with engine.begin() as conn:
        await conn.execute(delete(changes).where(changes.c.at < cutoff))
