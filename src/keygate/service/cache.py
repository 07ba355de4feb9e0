"""A small in-process TTL cache.

Invalidation rule, for every cache built on this: the service that changes a record evicts its
entry in the same call (so one node is always exact), and every entry expires after ``ttl`` seconds
(so another node that changed the record is seen within ``ttl``). ``ttl`` is
``KEYGATE_CACHE_TTL_SECONDS``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()


class TTLCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._data: OrderedDict[K, tuple[float, V | None]] = OrderedDict()

    def get(self, key: K) -> tuple[bool, V | None]:
        """Return ``(hit, value)``; a hit may carry ``None`` (a remembered absence)."""
        item = self._data.get(key)
        if item is None:
            return False, None
        expires, value = item
        if expires < time.monotonic():
            self._data.pop(key, None)
            return False, None
        return True, value

    def put(self, key: K, value: V | None) -> None:
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def evict(self, key: K) -> None:
        self._data.pop(key, None)

    def evict_where(self, predicate: "callable[[V], bool]") -> None:  # type: ignore[valid-type]
        for k in [k for k, (_, v) in self._data.items() if v is not None and predicate(v)]:
            self._data.pop(k, None)

    def clear(self) -> None:
        self._data.clear()
