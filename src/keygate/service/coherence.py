"""Keeping the in-process caches of every node coherent.

Each service evicts its own cache entries when it changes a record, then calls ``changed``. With
Redis configured, ``changed`` publishes the change and every other node applies the same eviction
(``apply``); a node that lost its subscription clears everything when it returns (``reset``) and,
until then, refuses to authenticate (``require_healthy``), since its caches may be stale. Without
Redis there is nobody to tell, and each cache's TTL bounds how stale another node can be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from keygate.domain.errors import ServiceUnavailable

UNHEALTHY = "Authentication is temporarily unavailable: the shared state store (Redis) cannot be reached; retry shortly"


class Bus(Protocol):
    connected: bool

    async def publish(self, kind: str, ident: str) -> None: ...


class Coherence:
    def __init__(self) -> None:
        self._bus: Bus | None = None
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._resets: list[Callable[[], None]] = []

    def attach(self, bus: Bus) -> None:
        self._bus = bus

    def on(self, kind: str, handler: Callable[[str], None], reset: Callable[[], None]) -> None:
        self._handlers.setdefault(kind, []).append(handler)
        self._resets.append(reset)

    async def changed(self, kind: str, ident: str) -> None:
        if self._bus is not None:
            await self._bus.publish(kind, ident)

    def apply(self, kind: str, ident: str) -> None:
        for handler in self._handlers.get(kind, []):
            handler(ident)

    def reset(self) -> None:
        for reset in self._resets:
            reset()

    def require_healthy(self) -> None:
        if self._bus is not None and not self._bus.connected:
            raise ServiceUnavailable(UNHEALTHY)
