"""The in-process TTL cache behind the session, key and user lookups."""

from __future__ import annotations

import asyncio
import time

from keygate.service.cache import TTLCache


def test_an_entry_is_a_hit_until_its_ttl_passes() -> None:
    cache: TTLCache[str, int] = TTLCache(0.05)
    cache.put("a", 1)
    cache.put("gone", None)
    assert cache.get("a") == (True, 1)
    assert cache.get("gone") == (True, None), "a remembered absence is a hit"
    assert cache.get("b") == (False, None)
    time.sleep(0.06)
    assert cache.get("a") == (False, None)


def test_expired_entries_are_dropped_by_later_puts_not_kept_until_the_size_limit() -> None:
    cache: TTLCache[int, int] = TTLCache(0.05, max_entries=100_000)
    for n in range(1000):
        cache.put(n, n)
    time.sleep(0.06)
    cache.put(-1, -1)
    assert len(cache) == 1


def test_the_size_limit_drops_the_oldest() -> None:
    cache: TTLCache[int, int] = TTLCache(60, max_entries=3)
    for n in range(5):
        cache.put(n, n)
    assert [cache.get(n)[0] for n in range(5)] == [False, False, True, True, True]


def test_a_put_again_renews_the_entry_and_keeps_the_expiry_order() -> None:
    cache: TTLCache[str, int] = TTLCache(0.08)
    cache.put("a", 1)
    time.sleep(0.05)
    cache.put("b", 2)
    cache.put("a", 3)  # renewed: now younger than "b"
    time.sleep(0.05)
    cache.put("c", 4)
    assert cache.get("a") == (True, 3) and cache.get("b") == (True, 2)


async def test_misses_at_the_same_time_share_one_load() -> None:
    cache: TTLCache[str, int] = TTLCache(60)
    calls = 0

    async def loader(key: str) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return 7

    assert await asyncio.gather(*[cache.load("k", loader) for _ in range(10)]) == [7] * 10
    assert calls == 1
    assert cache.get("k") == (True, 7)


async def test_a_load_overtaken_by_an_eviction_answers_but_is_not_stored() -> None:
    cache: TTLCache[str, int] = TTLCache(60)
    started = asyncio.Event()

    async def loader(key: str) -> int:
        started.set()
        await asyncio.sleep(0.01)
        return 1  # read before the change below

    pending = asyncio.ensure_future(cache.load("k", loader))
    await started.wait()
    cache.evict("k")  # the record changed meanwhile
    assert await pending == 1
    assert cache.get("k") == (False, None)
