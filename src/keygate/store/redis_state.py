"""``SharedState`` in Redis. Each operation is one atomic command or Lua script.

Keys (``kg`` stands for ``KEYGATE_REDIS_NAMESPACE``): ``kg:n:<api_key>`` (last increasing nonce, zero-padded), ``kg:u:<api_key>:<nonce>`` (a used
unique nonce, expiring with its window), ``kg:f:<scope>`` (failure count, expiring with its window),
``kg:b:<scope>`` (a block, expiring when it ends), ``kg:t:<user_id>`` (the last TOTP time step signed in with),
``kg:m:<mark>`` (a trusted source, expiring with its mark). Any Redis error becomes ``ServiceUnavailable``, so
authentication fails closed (503) and recovers by itself when Redis answers again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from keygate.domain.errors import ServiceUnavailable
from keygate.domain.replay import sortable

T = TypeVar("T")

_CLAIM_INCREASING = """
local cur = redis.call('GET', KEYS[1])
if cur and cur >= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

_CLAIM_STEP = """
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur and cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

_RECORD_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

UNAVAILABLE = "Authentication is temporarily unavailable: the shared state store (Redis) cannot be reached; retry shortly"


class RedisState:
    def __init__(self, url: str, namespace: str = "kg") -> None:
        self._ns = namespace
        self._redis = aioredis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=10, decode_responses=True
        )
        self._claim = self._redis.register_script(_CLAIM_INCREASING)
        self._fail = self._redis.register_script(_RECORD_FAILURE)
        self._step = self._redis.register_script(_CLAIM_STEP)

    @staticmethod
    async def _guard(op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError):
            raise ServiceUnavailable(UNAVAILABLE) from None

    async def claim_increasing(self, api_key: str, nonce: int) -> bool:
        return bool(await self._guard(lambda: self._claim(keys=[f"{self._ns}:n:{api_key}"], args=[sortable(nonce)])))

    async def claim_unique(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        return bool(await self._guard(lambda: self._redis.set(f"{self._ns}:u:{api_key}:{nonce}", "1", nx=True, ex=window_seconds)))

    async def forget_nonces(self, api_key: str) -> None:
        async def op() -> None:
            await self._redis.delete(f"{self._ns}:n:{api_key}")
            async for name in self._redis.scan_iter(match=f"{self._ns}:u:{api_key}:*", count=500):
                await self._redis.delete(name)

        await self._guard(op)

    async def record_failure(self, scope: str, window_seconds: int) -> int:
        return int(await self._guard(lambda: self._fail(keys=[f"{self._ns}:f:{scope}"], args=[window_seconds])))

    async def block(self, scope: str, seconds: float) -> None:
        await self._guard(lambda: self._redis.set(f"{self._ns}:b:{scope}", "1", px=max(1, int(seconds * 1000))))

    async def blocked_for(self, scopes: list[str]) -> float:
        if not scopes:
            return 0.0

        async def op() -> float:
            pipe = self._redis.pipeline(transaction=False)
            for scope in scopes:
                pipe.pttl(f"{self._ns}:b:{scope}")
            ttls = await pipe.execute()
            return max((t / 1000 for t in ttls if t and t > 0), default=0.0)

        return await self._guard(op)

    async def reset(self, scope: str) -> None:
        await self._guard(lambda: self._redis.delete(f"{self._ns}:f:{scope}", f"{self._ns}:b:{scope}"))

    async def claim_totp_step(self, user_id: int, step: int) -> bool:
        # Kept a day: a claimed step is only ever compared with the current one, give or take one.
        return bool(await self._guard(lambda: self._step(keys=[f"{self._ns}:t:{user_id}"], args=[step, 86400])))

    async def mark(self, name: str, seconds: int) -> None:
        await self._guard(lambda: self._redis.set(f"{self._ns}:m:{name}", "1", ex=max(1, seconds)))

    async def is_marked(self, name: str) -> bool:
        return bool(await self._guard(lambda: self._redis.exists(f"{self._ns}:m:{name}")))

    async def purge(self) -> None:
        return None

    async def ping(self) -> bool:
        return bool(await self._guard(lambda: self._redis.ping()))

    async def close(self) -> None:
        await self._redis.aclose()
