"""A bound on concurrent password hashing (Argon2), with trusted sign-ins served first.

Argon2 is made to be slow and memory-hungry; a password spray runs many at once and takes every CPU
from the event loop, so key sign-ins and signed calls slow down too. The gate lets ``slots`` hashes
run at a time (by default one less than the CPUs, at least one); trusted callers (a device token or a
known address of the user) wait in front of everyone else; untrusted callers queue up to
``max_waiting``, and past that are answered ``429`` at once, which costs nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from keygate.domain.errors import TooManyRequests

BUSY = "Too many sign-ins are being checked right now; retry after the time in Retry-After"


def default_slots() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class HashGate:
    def __init__(self, slots: int = 0, max_waiting: int = 64) -> None:
        self._slots = slots if slots > 0 else default_slots()
        self._max_waiting = max_waiting
        self._busy = 0
        self._trusted: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._trusted) + len(self._others)

    @asynccontextmanager
    async def slot(self, trusted: bool = False) -> AsyncIterator[None]:
        await self._acquire(trusted)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, trusted: bool) -> None:
        if self._busy < self._slots and not self._trusted and not self._others:
            self._busy += 1
            return
        queue = self._trusted if trusted else self._others
        if not trusted and len(self._others) >= self._max_waiting:
            raise TooManyRequests(1, BUSY)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter  # the releaser counted this slot as ours
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot, then cancelled: pass it on
            else:
                with suppress(ValueError):  # _release may have dropped it already
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        for queue in (self._trusted, self._others):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot passes on: _busy stays
                    return
        self._busy -= 1
