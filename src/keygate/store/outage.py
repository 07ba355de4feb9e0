"""Tell a database outage from a bug, in one place: the engine every repository uses.

``OutageAwareEngine`` is an ``AsyncEngine`` whose connections turn a connection-level failure into
``DatabaseUnavailable`` (HTTP 503, errorcode 102) as it leaves ``async with engine.begin()`` or
``async with engine.connect()``. Every adapter already answers a ``KeygateError`` in its own shape,
so the APEX endpoints, forward auth, WebSocket frames and the console all answer 503 without a line
of their own. Anything else (a constraint violation, a syntax error, a missing table, a Python bug)
passes through unchanged and stays a 500.

What counts as an outage:

* failing to get a connection at all: refused, reset, timed out (connect timeout, pool timeout),
  refused by the server (too many connections, starting up, shutting down, bad credentials);
* a connection that broke under a statement (SQLAlchemy marks it ``connection_invalidated``), or a
  statement that outlived the statement timeout;
* PostgreSQL SQLSTATE classes 08 (connection exception), 53 (insufficient resources) and 57P
  (operator intervention: shutdown, cannot connect now), and 57014 (cancelled by a statement timeout);
* SQLite's busy, locked, I/O, can't-open, read-only, full, corrupt and not-a-database errors.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keygate.domain.errors import DatabaseUnavailable, KeygateError

log = logging.getLogger("keygate.store")

_PG_OUTAGE_PREFIXES = ("08", "53", "57P", "57014")  # 57014: cancelled by a statement timeout
_SQLITE_OUTAGES = frozenset({
    "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_FULL",
    "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_PROTOCOL", "SQLITE_PERM", "SQLITE_NOMEM",
})
LOG_EVERY_SECONDS = 10.0
_last_logged = 0.0


def _driver_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def _is_asyncpg_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("asyncpg")


def is_outage(exc: BaseException, connecting: bool = False) -> bool:
    """Whether ``exc`` means the database cannot be reached or used right now.

    ``connecting``: raised while getting a connection, where a driver error of any kind (say, a
    password refused, or the server still starting) means no request can be served either.
    """
    if isinstance(exc, KeygateError) or not isinstance(exc, Exception):
        return False
    if isinstance(exc, (OSError, TimeoutError, PoolTimeout)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = _driver_error(exc)
    if isinstance(orig, (OSError, TimeoutError)):
        return True
    sqlstate = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(_PG_OUTAGE_PREFIXES):
        return True
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return "_".join(name.split("_")[:2]) in _SQLITE_OUTAGES
    if connecting:
        return isinstance(exc, DBAPIError) or _is_asyncpg_error(exc) or _is_asyncpg_error(orig)
    return False


def _unavailable(exc: BaseException) -> DatabaseUnavailable:
    global _last_logged
    now = time.monotonic()
    if now - _last_logged >= LOG_EVERY_SECONDS:  # one line per outage, not one per request
        _last_logged = now
        cause = _driver_error(exc)
        log.warning("database unavailable: %s: %s", type(cause).__name__, (str(cause).splitlines() or [""])[0][:200])
    return DatabaseUnavailable()


class OutageAwareConnection(AsyncConnection):
    async def start(self, is_ctxmanager: bool = False) -> AsyncConnection:
        try:
            return await super().start(is_ctxmanager)
        except Exception as exc:
            if is_outage(exc, connecting=True):
                raise _unavailable(exc) from exc
            raise

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        try:
            await super().__aexit__(type_, value, traceback)
        except Exception as exc:  # closing a broken connection can fail too
            if is_outage(exc) or (value is not None and is_outage(value)):
                raise _unavailable(value if value is not None else exc) from exc
            raise
        if value is not None and is_outage(value):
            raise _unavailable(value) from value


class OutageAwareEngine(AsyncEngine):
    """An ``AsyncEngine`` whose ``connect()`` and ``begin()`` raise ``DatabaseUnavailable`` for an outage."""

    _connection_cls = OutageAwareConnection
