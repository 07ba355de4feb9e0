"""Plain ``sqlite3`` helpers for the statements keygate runs outside SQLAlchemy (the nonce batches and
the leases of store/shared_state.py and store/window_leases.py, on the event loop's own connection)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TypeVar

T = TypeVar("T")


def sqlite_time(value: datetime) -> str:
    """How SQLAlchemy stores a ``UTCDateTime`` in SQLite (naive UTC, microseconds): string order is time order."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection is broken: its error is the one to report


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """The block under ``BEGIN IMMEDIATE`` (the file's write lock), committed; rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


def in_transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
    """``work()`` in a ``write_transaction``."""
    with write_transaction(db):
        return work()
