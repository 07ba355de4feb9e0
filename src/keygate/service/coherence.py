"""Keeping the in-process caches of every process coherent.

Each cache registers, per kind of change, how to drop what a change makes stale (``on``). A change is
recorded in the change log in its own transaction (``store.changes``); right after the commit this
process applies it (``apply``), and every other process applies it when its ``ChangeListener`` reads
the row: within ``store.changes.SQLITE_POLL_SECONDS`` on SQLite, at once on PostgreSQL (a
``NOTIFY``). A listener that cannot read the log for longer than ``STALE_AFTER_SECONDS`` may hold
stale caches, so until it reads again every authentication answers 503 (``require_healthy``); the same
holds while Redis, where configured, does not answer (it holds the nonce claims and failure counters).

Kinds: ``key`` (an API key, by key), ``user`` (by user id), ``session`` (one session, by token hash).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from keygate.domain.errors import ServiceUnavailable


class Source(Protocol):
    """Something authentication depends on: the change log's listener, or Redis."""

    @property
    def fresh(self) -> bool: ...

    @property
    def unavailable(self) -> str:
        """What a refused caller is told while ``fresh`` is false."""
        ...


class Coherence:
    def __init__(self) -> None:
        self._sources: list[Source] = []
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._resets: list[Callable[[], None]] = []
        # Counts every change applied here (and every reset): what was derived from the caches under
        # an older generation may be stale (the principal memo in service/auth.py checks it).
        self.generation = 0

    def attach(self, source: Source) -> None:
        self._sources.append(source)

    def on(self, kind: str, handler: Callable[[str], None], reset: Callable[[], None]) -> None:
        self._handlers.setdefault(kind, []).append(handler)
        self._resets.append(reset)

    def apply(self, kind: str, ident: str) -> None:
        self.generation += 1
        for handler in self._handlers.get(kind, ()):
            handler(ident)

    def reset(self) -> None:
        self.generation += 1
        for reset in self._resets:
            reset()

    def require_healthy(self) -> None:
        for source in self._sources:
            if not source.fresh:
                raise ServiceUnavailable(source.unavailable)
