"""``SharedState`` in Redis. Each operation is one atomic command or Lua script (``window`` claims of
concurrent requests: one script call for the whole batch, see ``RedisState._decide_windows``; a key
in steady use through one process: decided in its memory under a lease, store/redis_leases.py).

Keys (``kg`` stands for ``KEYGATE_REDIS_NAMESPACE``): ``kg:n:<api_key>`` (highest numeric nonce
accepted, zero-padded), ``kg:w:<api_key>`` and ``kg:z:<api_key>`` (a ``window`` key's floor and
style, and its remembered nonces), ``kg:L:<api_key>`` and ``kg:C:<api_key>`` (its lease),
``kg:u:<api_key>:<nonce>`` (a used unique nonce, expiring with its window), ``kg:f:<scope>`` (failure
count, expiring with its window), ``kg:b:<scope>`` (a block, expiring when it ends), ``kg:t:<user_id>``
(the last TOTP time step signed in with), ``kg:m:<mark>`` (a trusted source, expiring with its mark).
Any Redis error becomes ``ServiceUnavailable``, so authentication fails closed (503) and recovers by
itself when Redis answers again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from keygate.domain.errors import ServiceUnavailable
from keygate.domain.replay import SPREAD_GAP, nonce_as_u64, sortable
from keygate.store.batcher import Batcher
from keygate.store.redis_leases import CLAIM_WINDOWS, RedisLeaseStore, held_window, window_names
from keygate.store.shared_state import WindowClaim
from keygate.store.window_leases import LEASE_SECONDS, MIN_MARGIN, HeldWindow, WindowLeases, claim_window
from keygate.telemetry import redis_error

T = TypeVar("T")

_CLAIM_INCREASING = """
local cur = redis.call('GET', KEYS[1])
if cur and cur >= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

_CLAIM_UNIQUES = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[i]) and 1 or 0 end
return out
"""

_CLAIM_STEP = """
local cur = tonumber(redis.call('GET', KEYS[1]))
if cur and cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

_EXTEND_BLOCK = """
local left = redis.call('PTTL', KEYS[1])
if left >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
"""

_RECORD_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

def connect(url: str) -> aioredis.Redis:
    """A client that fails fast (1 s) and retries a command once on a fresh connection, so that a
    Redis restarted meanwhile costs no request (its pooled connections died with it)."""
    return aioredis.from_url(
        url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=10, decode_responses=True,
        retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
    )


UNAVAILABLE = "Authentication is temporarily unavailable: the shared state store (Redis) cannot be reached; retry shortly"


WATCH_SECONDS = 0.25
STALE_AFTER_SECONDS = 2.0  # Redis holds no invalidation: being told of an outage within 2 s is enough


class RedisState:
    """Nonce claims and failure counters in Redis; also watches that Redis answers (``fresh``), so that
    authentication fails closed (503) while it does not, even on paths that need no Redis command."""

    unavailable = UNAVAILABLE

    def __init__(self, url: str, namespace: str = "kg") -> None:
        self._answered_at = 0.0
        self._watch: asyncio.Task[None] | None = None
        self._ns = namespace
        self._redis = connect(url)
        self._claim = self._redis.register_script(_CLAIM_INCREASING)
        self._fail = self._redis.register_script(_RECORD_FAILURE)
        self._extend = self._redis.register_script(_EXTEND_BLOCK)
        self._window = self._redis.register_script(CLAIM_WINDOWS)
        # ``window`` claims: decided in memory under the key's lease (store/redis_leases.py), else one
        # script call per batch (store/batcher.py: at most MAX_BATCH claims, each waiting at most for
        # the call in flight plus its own), answered after Redis has run it; None: leased elsewhere.
        self.leases = WindowLeases(RedisLeaseStore(self._redis, namespace, self._guard), secrets.token_hex(8))
        self._windows: Batcher[WindowClaim, bool | None] = Batcher(self._decide_windows)
        self._uniques: Batcher[tuple[str, str, int], bool] = Batcher(self._decide_uniques)  # ``unique`` and v2 nonces
        self._step = self._redis.register_script(_CLAIM_STEP)
        self._unique = self._redis.register_script(_CLAIM_UNIQUES)

    @staticmethod
    async def _guard(op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError):
            redis_error("state")
            raise ServiceUnavailable(UNAVAILABLE) from None

    async def claim_increasing(self, api_key: str, nonce: int) -> bool:
        return bool(await self._guard(lambda: self._claim(keys=[f"{self._ns}:n:{api_key}"], args=[sortable(nonce)])))

    async def claim_unique(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        claimed = await self._uniques.submit((api_key, nonce, window_seconds))
        value = nonce_as_u64(nonce)
        if claimed and value is not None:  # every strict mode keeps the highest: a switch to ``increasing`` refuses these
            await self.raise_highest_nonce(api_key, value)
        return claimed

    async def claim_signature_nonce(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        """Apart from APEX nonces already: each a key of its own (``kg:u:<api_key>:<nonce>``)."""
        return await self._uniques.submit((api_key, nonce, window_seconds))

    def claim_window_now(self, api_key: str, nonce: str, limit: int) -> bool | None:
        return self.leases.decide_now(api_key, nonce, limit)

    async def claim_window(self, api_key: str, nonce: str, limit: int, window_seconds: int) -> bool:
        return await claim_window(self.leases, WindowClaim(api_key, nonce, limit, window_seconds), self._windows.submit)

    async def _decide_uniques(self, claims: list[tuple[str, str, int]]) -> list[bool]:
        """One script call per batch: ``SET key 1 NX EX window`` per claim, in order (a repeat within
        the batch finds the first one's key and is refused, as it would be one at a time). A pipeline
        of SETs cost redis-py a packed command and a parsed reply per claim."""
        names = [f"{self._ns}:u:{api_key}:{nonce}" for api_key, nonce, _ in claims]
        windows = [window for _, _, window in claims]
        return [bool(r) for r in await self._guard(lambda: self._unique(keys=names, args=windows))]

    async def _decide_windows(self, claims: list[WindowClaim]) -> list[bool | None]:
        """One script call per batch (per group of settings: one, in practice), which also revokes
        the leases of dead holders, asks live ones to hand back, and leases free keys to this process."""
        started = time.monotonic()
        results: list[bool | None] = [False] * len(claims)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, c in enumerate(claims):
            groups.setdefault((c.limit, c.window_seconds), []).append(i)
        leases = self.leases
        for (limit, window), idxs in groups.items():
            keys: list[str] = []
            args: list[str | int] = [int(time.time() * 1000), window * 1000, limit, SPREAD_GAP, leases.holder,
                                     int(LEASE_SECONDS * 1000), MIN_MARGIN]
            for i in idxs:
                api_key, nonce = claims[i].api_key, claims[i].nonce
                value = nonce_as_u64(nonce)
                keys += window_names(self._ns, api_key)
                args += (nonce, sortable(value) if value is not None else "", "1" if leases.held_here(api_key) else "",
                         "1" if leases.may_take(api_key) else "")
            decided, taken = await self._guard(lambda: self._window(keys=keys, args=args))
            for i, d in zip(idxs, decided, strict=True):
                results[i] = None if d == 2 else bool(d)
            if taken:
                ceilings: dict[str, str] = {}
                windows: dict[str, HeldWindow | None] = {}
                for row in taken:
                    key = claims[idxs[int(row[0])]].api_key
                    ceilings[key], windows[key] = row[1], held_window(row[2], row[3], list(row[4:]))
                await leases.install(ceilings, started, windows)
        return results

    async def end_window_lease(self, api_key: str) -> None:
        """The key's lease ends everywhere (its replay mode changes): see ``WindowLeases.revoke``."""
        await self.leases.revoke(api_key)

    async def forget_key(self, api_key: str) -> None:
        """The key was deleted: its window, highest nonce and lease go (a ``window`` key's remembered
        nonces never expire); its ``unique`` nonces expire with their windows. A lease held here is
        dropped unwritten; one held elsewhere is found gone at its next renewal."""
        self.leases.forget(api_key)
        await self._guard(lambda: self._redis.delete(*window_names(self._ns, api_key)))

    async def highest_nonce(self, api_key: str) -> int | None:
        value = await self._guard(lambda: self._redis.get(f"{self._ns}:n:{api_key}"))
        return int(value) if value is not None else None

    async def raise_highest_nonce(self, api_key: str, nonce: int) -> None:
        await self._guard(lambda: self._claim(keys=[f"{self._ns}:n:{api_key}"], args=[sortable(nonce)]))

    async def record_failure(self, scope: str, window_seconds: int) -> int:
        return int(await self._guard(lambda: self._fail(keys=[f"{self._ns}:f:{scope}"], args=[window_seconds])))

    async def block(self, scope: str, seconds: float) -> None:
        """Extend only: a shorter back-off decided concurrently never cuts a longer block (a lockout) short."""
        await self._guard(lambda: self._extend(keys=[f"{self._ns}:b:{scope}"], args=[max(1, int(seconds * 1000))]))

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

    @property
    def fresh(self) -> bool:
        return self._watch is None or time.monotonic() - self._answered_at < STALE_AFTER_SECONDS

    async def start_watch(self) -> None:
        self._answered_at = time.monotonic()
        self._watch = asyncio.create_task(self._watch_loop(), name="keygate-redis-watch")

    async def _watch_loop(self) -> None:
        while True:
            try:
                await self._redis.ping()
                self._answered_at = time.monotonic()
            except (RedisError, OSError):
                pass
            await asyncio.sleep(WATCH_SECONDS)

    async def close(self) -> None:
        await self.leases.close()  # every key handed back with its exact window: no revocation after us
        if self._watch is not None:
            self._watch.cancel()
            try:
                await self._watch
            except asyncio.CancelledError:
                pass
        await self._redis.aclose()
