"""The Argon2 gate: a bounded number of hashes at once, trusted callers first, a bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from keygate.domain.errors import TooManyRequests
from keygate.domain.throttle import network_of
from keygate.service.hash_gate import HashGate


async def test_one_slot_serves_trusted_waiters_first_and_bounds_the_queue():
    gate = HashGate(slots=1, max_waiting=2)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    async def use(name: str, trusted: bool) -> None:
        async with gate.slot(trusted=trusted):
            order.append(name)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(use("a", False)), asyncio.create_task(use("b", False))]
    await asyncio.sleep(0)
    with pytest.raises(TooManyRequests):
        await use("c", False)  # the queue of untrusted callers is full: answered at once
    waiting.append(asyncio.create_task(use("owner", True)))  # trusted callers are never turned away
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, *waiting)
    assert order == ["owner", "a", "b"]
    assert gate.waiting == 0


async def test_a_cancelled_waiter_gives_its_turn_away():
    gate = HashGate(slots=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await holder
    async with gate.slot():  # the slot is free again
        pass


def test_ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4():
    assert network_of("2001:db8:1:2::1") == network_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert network_of("2001:db8:1:3::1") != network_of("2001:db8:1:2::1")
    assert network_of("::ffff:198.51.100.7") == "198.51.100.7"
    assert network_of("198.51.100.7") == "198.51.100.7"
