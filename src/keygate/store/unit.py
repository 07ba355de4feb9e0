"""One transaction for a change, its audit record and its change-log rows.

``async with units.begin() as tx`` gives the connection to pass to repository writes; ``tx.audit``
and ``tx.changed`` queue what commits with them. Nothing of it is lost to a crash (kill -9): the
change, its audit row and the row that tells other processes commit together, or not at all.
After the commit, ``on_commit`` applies the changes to this process's caches at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keygate.store import changes
from keygate.store.repositories import AuditEvent, AuditRepository


class Unit:
    __slots__ = ("conn", "events", "changes")

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.events: list[AuditEvent] = []
        self.changes: list[tuple[str, str]] = []

    def audit(self, event: AuditEvent) -> None:
        self.events.append(event)

    def changed(self, kind: str, ident: str | int) -> None:
        self.changes.append((kind, str(ident)))


class Units:
    def __init__(self, engine: AsyncEngine, audit: AuditRepository, on_commit: Callable[[str, str], None]) -> None:
        self._engine = engine
        self._audit = audit
        self._on_commit = on_commit

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Unit]:
        async with self._engine.begin() as conn:
            unit = Unit(conn)
            yield unit
            if unit.events:
                await self._audit.append_many(unit.events, conn)
            await changes.record(conn, unit.changes)
        for kind, ident in unit.changes:
            self._on_commit(kind, ident)
