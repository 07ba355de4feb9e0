"""Cache coherence between nodes over Redis pub/sub, and the shared session tier.

Every node caches keys, users and sessions in memory. When one node changes or revokes one of them
it evicts its own entry and publishes ``node|kind|id`` on ``<namespace>:invalidate``; every other node evicts
the same entry. A node whose subscription drops cannot know what it missed, so it reports itself
unhealthy (authentication answers 503) until it has resubscribed and cleared all its caches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from keygate.domain.errors import ServiceUnavailable
from keygate.domain.permissions import format_permissions, parse_permissions
from keygate.domain.sessions import Session, SessionKind
from keygate.store.redis_state import UNAVAILABLE
from keygate.telemetry import redis_error

log = logging.getLogger("keygate.redis")


class RedisBus:
    def __init__(self, url: str, on_message: Callable[[str, str], None], on_reset: Callable[[], None], namespace: str = "kg") -> None:
        self._channel = f"{namespace}:invalidate"
        self._redis = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0, decode_responses=True)
        self._listen = aioredis.from_url(url, socket_connect_timeout=1.0, decode_responses=True)
        self._node = secrets.token_hex(6)
        self._on_message = on_message
        self._on_reset = on_reset
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keygate-redis-bus")

    async def wait_connected(self, timeout: float = 5.0) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.connected and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return self.connected

    async def publish(self, kind: str, ident: str) -> None:
        try:
            await self._redis.publish(self._channel, f"{self._node}|{kind}|{ident}")
        except (RedisError, OSError):
            redis_error("bus")
            self.connected = False
            raise ServiceUnavailable(UNAVAILABLE) from None

    async def _run(self) -> None:
        while True:
            pubsub = self._listen.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self._on_reset()  # whatever happened while we were away is forgotten
                self.connected = True
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        await self._listen.ping()
                        continue
                    node, kind, ident = str(message["data"]).split("|", 2)
                    if node != self._node:
                        self._on_message(kind, ident)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ValueError) as exc:
                redis_error("bus")
                if self.connected:
                    log.warning("lost the Redis invalidation channel (%s); failing closed until it returns", type(exc).__name__)
                self.connected = False
                await asyncio.sleep(0.5)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._redis.aclose()
        await self._listen.aclose()


def _encode(s: Session) -> str:
    return json.dumps({
        "u": s.user_id, "k": s.kind.value, "p": format_permissions(s.permissions), "a": s.api_key, "i": s.client_ip,
        "c": s.created_at.isoformat(), "l": s.last_seen_at.isoformat(), "e": s.expires_at.isoformat(),
    })


def _decode(token_hash: str, raw: str) -> Session:
    d = json.loads(raw)
    return Session(
        token_hash=token_hash, user_id=d["u"], kind=SessionKind(d["k"]), permissions=parse_permissions(d["p"]),
        api_key=d["a"], client_ip=d["i"], created_at=datetime.fromisoformat(d["c"]),
        last_seen_at=datetime.fromisoformat(d["l"]), expires_at=datetime.fromisoformat(d["e"]),
    )


class RedisSessionTier:
    """Sessions shared by all nodes in Redis, in front of the database (which stays the record)."""

    def __init__(self, url: str, namespace: str = "kg") -> None:
        self._ns = namespace
        self._redis = aioredis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0, decode_responses=True)

    async def get(self, token_hash: str) -> Session | None:
        try:
            raw = await self._redis.get(f"{self._ns}:s:{token_hash}")
        except (RedisError, OSError):
            redis_error("sessions")
            raise ServiceUnavailable(UNAVAILABLE) from None
        return _decode(token_hash, raw) if raw else None

    async def put(self, session: Session, idle: timedelta) -> None:
        ttl = max(1, int(min((session.expires_at - session.last_seen_at), idle).total_seconds()))
        try:
            await self._redis.set(f"{self._ns}:s:{session.token_hash}", _encode(session), ex=ttl)
        except (RedisError, OSError):
            redis_error("sessions")
            raise ServiceUnavailable(UNAVAILABLE) from None

    async def delete(self, token_hashes: list[str]) -> None:
        if not token_hashes:
            return
        try:
            await self._redis.delete(*[f"{self._ns}:s:{h}" for h in token_hashes])
        except (RedisError, OSError):
            redis_error("sessions")
            raise ServiceUnavailable(UNAVAILABLE) from None

    async def close(self) -> None:
        await self._redis.aclose()
