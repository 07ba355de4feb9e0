"""A small in-process TTL cache.

Invalidation rule, for every cache built on this: the service that changes a record evicts its
entry in the same call (so one node is always exact), and every entry expires after ``ttl`` seconds
(so another node that changed the record is seen within ``ttl``). ``ttl`` is
``KEYGATE_CACHE_TTL_SECONDS``.

Every entry lives ``ttl`` from its ``put``, and ``put`` moves the entry to the end, so the entries
are kept in the order they expire: each ``put`` drops the expired ones from the front. The cache
holds what was put in the last ``ttl`` seconds (at most ``max_entries``), not a growing heap of dead
entries (the session cache gets one ``put`` per ``AuthenticateUser``).

``load`` reads through the cache with one load per key at a time: when an entry expires under load,
the requests that miss together share one database read instead of each making its own. A load
that an ``evict``, ``put`` or ``clear`` overtakes still answers its callers but is not stored, so an
invalidation is never undone by a read that started before it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from keygate.telemetry import cache_counter

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 100_000, name: str | None = None) -> None:
        """``name`` labels the cache's hit and miss counts in the metrics (``keygate_cache_lookups_total``)."""
        self._ttl = ttl
        self._counts = cache_counter(name)
        self._max = max_entries
        self._data: OrderedDict[K, tuple[float, V | None]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V | None]] = {}

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._data)

    def get(self, key: K) -> tuple[bool, V | None]:
        """Return ``(hit, value)``; a hit may carry ``None`` (a remembered absence)."""
        item = self._data.get(key)
        if item is None:
            self._counts.miss()
            return False, None
        expires, value = item
        if expires < time.monotonic():
            self._data.pop(key, None)
            self._counts.miss()
            return False, None
        self._counts.hit()
        return True, value

    async def load(self, key: K, loader: Callable[[K], Awaitable[V | None]]) -> V | None:
        """The cached value, or ``loader(key)`` (shared by concurrent misses) remembered for ``ttl``."""
        hit, value = self.get(key)
        if hit:
            return value
        pending = self._loading.get(key)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = self._loading[key] = asyncio.ensure_future(self._load(key, loader))
        return await asyncio.shield(pending)

    async def _load(self, key: K, loader: Callable[[K], Awaitable[V | None]]) -> V | None:
        this = asyncio.current_task()
        try:
            value = await loader(key)
        finally:
            current = self._loading.get(key)
            if current is this:
                del self._loading[key]
        if current is this:  # not overtaken by an invalidation
            self.put(key, value)
        return value

    def put(self, key: K, value: V | None) -> None:
        self._loading.pop(key, None)
        now = time.monotonic()
        data = self._data
        data[key] = (now + self._ttl, value)
        data.move_to_end(key)
        while data:
            oldest = next(iter(data.values()))
            if oldest[0] >= now and len(data) <= self._max:
                break
            data.popitem(last=False)

    def evict(self, key: K) -> None:
        self._loading.pop(key, None)
        self._data.pop(key, None)

    def clear(self) -> None:
        self._loading.clear()
        self._data.clear()
