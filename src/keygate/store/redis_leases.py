"""``window`` leases in Redis: the rules of store/window_leases.py, with the lease a Redis key.

Why: with Redis every ``window`` claim was a script call (about 35 us of the server's CPU in redis-py,
and a round trip the request waits for). A process that holds a key's lease decides its claims in
memory, as on SQLite, and Redis sees one renewal every ``RENEW_SECONDS`` for all its keys.

Keys (``kg``: ``KEYGATE_REDIS_NAMESPACE``), beside the window's own (``kg:w``, ``kg:z``, ``kg:n``,
store/redis_state.py):

- ``kg:L:<api_key>``: the holder's id, expiring ``LEASE_SECONDS`` after the holder's last renewal
  (Redis's own expiry, so the processes' clocks never meet: a holder stops deciding ``LEASE_MARGIN``
  before that, counted on its monotonic clock from the start of the renewal). ``''`` is a shared
  mark, expiring after ``SHARED_SECONDS``: nobody takes the lease, Redis decides every claim.
- ``kg:C:<api_key>``: a hash, ``c`` the lease's reserved ceiling and ``x`` the contended mark. It has
  no expiry: found without a live ``kg:L`` holder, it is the lease of a holder that died (or
  stalled), and the next claim of any process *revokes* it in the claim's own script: the key's floor
  and highest nonce rise to ``c``, so nothing that holder may have accepted is accepted again.

Every step is one script, atomic in Redis: the claim batch (``CLAIM_WINDOWS``: revoke, decide, take),
the renewal of all of a process's leases, a ceiling raise, a hand-back (the exact window written, the
lease gone) and an operator's revocation. A failed call (Redis away) leaves the leases to lapse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from keygate.store.window_leases import LEASE_SECONDS, MIN_MARGIN, SHARED_SECONDS, HeldWindow

T = TypeVar("T")

# Raise a key's floor (in its state hash) and highest nonce to a revoked lease's ceiling.
_RAISE = """
local function raise(hk, nk, c)
  local f = redis.call('HGET', hk, 'f')
  if not f or f < c then redis.call('HSET', hk, 'f', c) end
  local n = redis.call('GET', nk)
  if not n or n < c then redis.call('SET', nk, c) end
end
"""

# The ``window`` mode (domain.replay) for a batch of claims, decided in order, with the leases.
# Per claim, KEYS: the key's state hash (f: floor, s: random-style), its remembered nonces (a sorted
# set: by value while increasing-style, by time, after SPREAD_BASE, once random-style), its highest
# nonce, its lease and its lease's hash. ARGV: now (ms), window (ms), limit, SPREAD_GAP, this
# process's id, the lease's length (ms), the least margin of a new ceiling, then per claim the nonce,
# its 20-digit form ('' if not a number), and two flags: held (or being taken) by this process, and
# may be taken by it. Returns {verdicts, taken}: a verdict per claim (0 refused, 1 accepted, 2 the
# key is leased: by another process, which is asked to hand it back, or by this one: try again),
# and per key leased by this batch {claim index, ceiling, floor, highest, remembered nonces...}.
CLAIM_WINDOWS = _RAISE + """
local SPREAD_BASE = 1e15
local now, window, limit, gap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local holder, lease_ms, margin = ARGV[5], ARGV[6], tonumber(ARGV[7])
local function claim(hk, zk, nk, nonce, padded)
  local st = redis.call('HMGET', hk, 'f', 's')
  local floor, spread = st[1], st[2] == '1'
  if spread then redis.call('ZREMRANGEBYSCORE', zk, SPREAD_BASE, SPREAD_BASE + now - window) end
  if padded ~= '' and floor and padded <= floor then return 0 end
  if redis.call('ZSCORE', zk, nonce) then return 0 end
  local high = redis.call('GET', nk)
  if not spread and (padded == '' or (high and tonumber(high) - tonumber(padded) > gap)) then
    spread = true
    redis.call('HSET', hk, 's', '1')
  end
  redis.call('ZADD', zk, spread and (SPREAD_BASE + now) or tonumber(padded), nonce)
  local n = redis.call('ZCARD', zk)
  if n > limit then
    if not spread then
      for _, m in ipairs(redis.call('ZRANGE', zk, 0, n - limit - 1)) do
        if string.match(m, '^%d+$') and #m <= 20 then
          local v = string.rep('0', 20 - #m) .. m
          if not floor or v > floor then floor = v end
        end
      end
      if floor then redis.call('HSET', hk, 'f', floor) end
    end
    redis.call('ZREMRANGEBYRANK', zk, 0, n - limit - 1)
  end
  if padded ~= '' and (not high or padded > high) then redis.call('SET', nk, padded) end
  return 1
end
-- What the lease of a claim's key says, once per key per batch: 'wait', 'shared' or 'free'.
local function lease(i, hk, nk, lk, ck)
  local l = redis.call('GET', lk)
  if l and l ~= '' and (l ~= holder or ARGV[10 + 4 * i] == '1') then
    if l ~= holder then redis.call('HSET', ck, 'x', '1') end
    return 'wait'
  end
  local c = redis.call('HGET', ck, 'c')
  if c then  -- a lease whose holder died or stalled (or lapsed here): everything up to its ceiling refused
    raise(hk, nk, c)
    redis.call('DEL', ck)
    if l then redis.call('DEL', lk) end
    l = nil
  end
  if l == '' then return 'shared' end
  return 'free'
end
local out, seen, last, order = {}, {}, {}, {}
for i = 0, #KEYS / 5 - 1 do
  local hk, zk, nk, lk, ck = KEYS[5 * i + 1], KEYS[5 * i + 2], KEYS[5 * i + 3], KEYS[5 * i + 4], KEYS[5 * i + 5]
  local state = seen[lk]
  if not state then
    state = lease(i, hk, nk, lk, ck)
    seen[lk] = state
  end
  if state == 'wait' then
    out[i + 1] = 2
  else
    out[i + 1] = claim(hk, zk, nk, ARGV[8 + 4 * i], ARGV[9 + 4 * i])
    if state == 'free' and ARGV[11 + 4 * i] == '1' then
      if not last[lk] then order[#order + 1] = lk end
      last[lk] = i
    end
  end
end
local taken = {}
for _, lk in ipairs(order) do
  local i = last[lk]
  local hk, zk, nk, ck = KEYS[5 * i + 1], KEYS[5 * i + 2], KEYS[5 * i + 3], KEYS[5 * i + 5]
  if redis.call('HGET', hk, 's') ~= '1' then
    local high = redis.call('GET', nk)
    local ceiling = high or string.format('%020.0f', margin)
    if high and tonumber(high) < 9e15 then ceiling = string.format('%020.0f', tonumber(high) + margin) end
    redis.call('SET', lk, holder, 'PX', lease_ms)
    redis.call('HSET', ck, 'c', ceiling, 'x', '0')
    local row = {i, ceiling, redis.call('HGET', hk, 'f') or '', high or ''}
    for _, m in ipairs(redis.call('ZRANGE', zk, 0, -1)) do row[#row + 1] = m end
    taken[#taken + 1] = row
  end
end
return {out, taken}
"""

_RENEW = """
local out = {}
for i = 1, #KEYS / 2 do
  if redis.call('GET', KEYS[2 * i - 1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[2])
    out[i] = redis.call('HGET', KEYS[2 * i], 'x') == '1' and 1 or 0
  else
    out[i] = -1
  end
end
return out
"""

_SET_CEILING = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'c', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_CONTEND = """
local l = redis.call('GET', KEYS[1])
if l and l ~= '' and l ~= ARGV[1] then
  redis.call('HSET', KEYS[2], 'x', '1')
  return 1
end
return 0
"""

# KEYS: lease, lease hash, state hash, remembered nonces, highest. ARGV: holder, shared ('1' or ''),
# shared mark's length (ms), floor, highest ('' if none), the count of forgotten nonces, those
# nonces, then the added ones, each with its score.
_HAND_BACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local forgotten = tonumber(ARGV[6])
for i = 7, 6 + forgotten do redis.call('ZREM', KEYS[4], ARGV[i]) end
for i = 7 + forgotten, #ARGV, 2 do redis.call('ZADD', KEYS[4], ARGV[i + 1], ARGV[i]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], 'f', ARGV[4]) end
if ARGV[5] ~= '' then
  local n = redis.call('GET', KEYS[5])
  if not n or n < ARGV[5] then redis.call('SET', KEYS[5], ARGV[5]) end
end
redis.call('DEL', KEYS[2])
if ARGV[2] == '1' then redis.call('SET', KEYS[1], '', 'PX', ARGV[3]) else redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: lease, lease hash, state hash, highest. ARGV: the shared mark's length (ms).
_REVOKE = _RAISE + """
local c = redis.call('HGET', KEYS[2], 'c')
if c then raise(KEYS[3], KEYS[4], c) end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], '', 'PX', ARGV[1])
return 1
"""


def window_names(namespace: str, key: str) -> tuple[str, str, str, str, str]:
    """A ``window`` key's Redis keys: its state hash, remembered nonces, highest nonce, lease and
    lease hash, in the order ``CLAIM_WINDOWS`` takes them."""
    return (f"{namespace}:w:{key}", f"{namespace}:z:{key}", f"{namespace}:n:{key}", f"{namespace}:L:{key}",
            f"{namespace}:C:{key}")


def _sortable(value: int | None) -> str:
    return f"{value:020d}" if value is not None else ""


def held_window(floor: str, high: str, members: list[str]) -> HeldWindow:
    """A window read by the claim script that leased it."""
    return HeldWindow(high or None, floor or None, members)


class RedisLeaseStore:
    """``LeaseStore`` in Redis (``redis.asyncio`` client, keys under ``namespace``); ``guard`` turns a
    Redis error into the service's ``ServiceUnavailable``."""

    def __init__(self, client: Any, namespace: str, guard: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]) -> None:
        self._ns = namespace
        self._guard = guard
        self._renew = client.register_script(_RENEW)
        self._set_ceiling = client.register_script(_SET_CEILING)
        self._contend = client.register_script(_CONTEND)
        self._hand_back = client.register_script(_HAND_BACK)
        self._revoke = client.register_script(_REVOKE)
        self._get = client.get
        self._client = client

    def keys(self, key: str) -> tuple[str, str]:
        return window_names(self._ns, key)[3:]

    async def set_ceiling(self, key: str, holder: str, ceiling: str) -> bool:
        lk, ck = self.keys(key)
        return bool(await self._guard(lambda: self._set_ceiling(keys=[lk, ck], args=[holder, ceiling, int(LEASE_SECONDS * 1000)])))

    async def load(self, keys: list[str]) -> dict[str, HeldWindow | None]:
        """The keys' windows as Redis holds them (``None``: random-style). The claim script that
        leases a key returns its window itself, so a lease taken here needs no second read."""

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                state, remembered, highest, _, _ = window_names(self._ns, key)
                pipe.hmget(state, "f", "s")
                pipe.zrange(remembered, 0, -1)
                pipe.get(highest)
            return list(await pipe.execute())

        found = await self._guard(read)
        windows: dict[str, HeldWindow | None] = {}
        for i, key in enumerate(keys):
            (floor, spread), members, high = found[3 * i], found[3 * i + 1], found[3 * i + 2]
            windows[key] = None if spread == "1" else held_window(floor or "", high or "", list(members))
        return windows

    async def renew(self, holder: str, keys: list[str]) -> dict[str, bool]:
        if not keys:
            return {}
        names = [name for key in keys for name in self.keys(key)]
        out = await self._guard(lambda: self._renew(keys=names, args=[holder, int(LEASE_SECONDS * 1000)]))
        return {key: r == 1 for key, r in zip(keys, out, strict=True) if r != -1}

    async def hand_back(self, key: str, holder: str, window: HeldWindow, shared: bool) -> None:
        args: list[str | int] = [holder, "1" if shared else "", int(SHARED_SECONDS * 1000), _sortable(window.floor),
                                 _sortable(window.high), len(window.forgotten), *window.forgotten]
        for nonce in window.added:
            args += (nonce, int(nonce))  # increasing-style: every nonce held is a number, its score its value
        state, remembered, highest, lk, ck = window_names(self._ns, key)
        names = [lk, ck, state, remembered, highest]
        await self._guard(lambda: self._hand_back(keys=names, args=args))

    async def contend(self, key: str, holder: str) -> bool:
        return bool(await self._guard(lambda: self._contend(keys=list(self.keys(key)), args=[holder])))

    async def revoke(self, key: str) -> None:
        state, _, highest, lk, ck = window_names(self._ns, key)
        await self._guard(lambda: self._revoke(keys=[lk, ck, state, highest],
                                               args=[int(SHARED_SECONDS * 1000)]))

    async def handed_over(self, key: str, holder: str) -> bool:
        lk, _ = self.keys(key)
        value = await self._guard(lambda: self._get(lk))
        return value is None or value in ("", holder)


__all__ = ["CLAIM_WINDOWS", "MIN_MARGIN", "RedisLeaseStore", "held_window", "window_names"]
