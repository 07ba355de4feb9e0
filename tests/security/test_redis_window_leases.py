"""``window`` claims decided in memory with Redis (store/redis_leases.py), and every promise kept.

Real server processes on one PostgreSQL database and one Redis, a client signing each request with a
fresh nonce:

- A key in steady use on one process is decided in that process's memory: Redis is not written per
  claim (on the code before, every claim added its nonce to the key's sorted set); stopped, the
  server hands the exact window back, and a new process refuses every replay and accepts the
  client's next nonce at once.
- Killed (``kill -9``) under load, the holder's accepted nonces are never accepted again, by the
  restarted process or another one (the lease expires in Redis; the next claim revokes it).
- Two processes taking turns on one key: the lease is handed over once, every fresh set accepted
  once, every replay refused by both.
- A change of the key's replay mode by the CLI takes the window back; a stalled holder (``SIGSTOP``)
  is revoked, and woken it accepts no replay.
- Redis away while a key is held: within 2 s every call fails closed (503), none is decided from memory.
- In memory the rules are Redis's (hypothesis: the same verdicts and window as the script's).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from lease_support import Key, Micros, call, client, load_until_killed, new_key, servers  # noqa: F401  (fixtures, used by name)

from keygate.config import Settings
from keygate.domain.replay import SPREAD_GAP
from support import Server, _psql, need, pg_available, redis_available, settings_env, start_server

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Settings]:
    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    need(redis_available(), "Redis at 127.0.0.1:6379")
    name = f"keygate_test_{uuid.uuid4().hex[:12]}"
    _psql(f'CREATE DATABASE "{name}"')
    namespace = f"kgtest{secrets.token_hex(4)}"
    try:
        yield Settings(data_dir=tmp_path, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
                       redis_url=REDIS_URL, redis_namespace=namespace,
                       master_key=base64.b64encode(secrets.token_bytes(32)).decode(), default_replay_mode="window",
                       throttle_ip_failures=1_000_000, throttle_key_failures=1_000_000, throttle_user_failures=1_000_000)
    finally:
        r = redis.Redis.from_url(REDIS_URL)
        for k in r.scan_iter(f"{namespace}:*"):
            r.delete(k)
        r.close()
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Seen:
    """What Redis holds of a key: its remembered nonces and its lease."""

    def __init__(self, settings: Settings) -> None:
        self.r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.ns = settings.redis_namespace

    def remembered(self, key: Key) -> int:
        return int(self.r.zcard(f"{self.ns}:z:{key.api_key}"))

    def lease(self, key: Key) -> str | None:
        value = self.r.get(f"{self.ns}:L:{key.api_key}")
        return value if value is None else str(value)

    def ceiling(self, key: Key) -> str | None:
        value = self.r.hget(f"{self.ns}:C:{key.api_key}", "c")
        return value if value is None else str(value)


async def test_a_key_in_steady_use_is_decided_in_memory_and_handed_back_exactly(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    seen = Seen(deployment)
    key = await new_key(deployment)
    servers.append(server := start_server(deployment))
    base = int(time.time() * 1000) * 1000
    assert await call(client, server, key, base) == 200  # the first claim: Redis decides, and leases the key
    fresh = [base + 10 * i for i in range(1, 301)]
    assert [await call(client, server, key, n) for n in fresh] == [200] * 300
    late = [base + 10 * i - 5 for i in range(250, 300)]  # out of order, never used: accepted (the window remembers)
    assert [await call(client, server, key, n) for n in late] == [200] * 50
    replays = fresh[::7] + late[::5] + [base]
    assert [await call(client, server, key, n) for n in replays] == [401] * len(replays)
    assert seen.lease(key) not in (None, "")
    assert seen.remembered(key) == 1  # 351 accepted; written: the first one only (each one, before)

    server.process.send_signal(signal.SIGTERM)  # a clean stop hands the exact window back
    server.process.wait(timeout=15)
    assert seen.remembered(key) == 351 and seen.lease(key) is None and seen.ceiling(key) is None
    servers.append(again := start_server(deployment))
    assert [await call(client, again, key, n) for n in replays + fresh[1::9]] == [401] * (len(replays) + len(fresh[1::9]))
    assert await call(client, again, key, fresh[-1] + 1) == 200  # no floor raised: the very next nonce is fine
    assert await call(client, again, key, base + 2995) == 200  # nor an out-of-order one the window never saw


async def test_after_kill_9_no_nonce_the_holder_accepted_is_accepted_again(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    seen = Seen(deployment)
    key = await new_key(deployment)
    servers.append(victim := start_server(deployment))
    servers.append(other := start_server(deployment))
    answered: list[int] = []
    micros = Micros()
    workers = [asyncio.create_task(load_until_killed(client, victim, key, micros, answered))]
    await asyncio.sleep(1.5)
    assert seen.lease(key) not in (None, "")  # held: decided in the victim's memory
    victim.process.kill()  # kill -9, under load: nothing of its window written
    victim.process.wait()
    await asyncio.gather(*workers)
    assert len(answered) >= 20, len(answered)
    assert seen.remembered(key) < len(answered)  # what was decided in memory died with it

    servers.append(restarted := start_server(deployment))
    for target in (other, restarted):  # the lease expired in Redis meanwhile: the first claim revokes it
        replies = await asyncio.gather(*(call(client, target, key, n) for n in answered))
        assert replies == [401] * len(answered)
    assert seen.ceiling(key) is None or seen.lease(key) not in (None, "")  # revoked (and maybe leased anew)
    assert await call(client, restarted, key, micros()) == 200  # a restart outlasts the reserved ceiling
    assert await call(client, other, key, micros()) == 200


async def test_two_processes_taking_turns_hand_the_lease_over_once(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    seen = Seen(deployment)
    key = await new_key(deployment)
    servers.extend([start_server(deployment), start_server(deployment)])
    base = int(time.time() * 1000) * 1000
    fresh = [base + i for i in range(200)]
    started = time.monotonic()
    outcomes = [await call(client, servers[i % 2], key, n) for i, n in enumerate(fresh)]
    assert outcomes == [200] * len(fresh)
    assert time.monotonic() - started < 15
    assert seen.lease(key) == "" and seen.ceiling(key) is None  # handed over, then shared: decided by Redis
    assert seen.remembered(key) == 200
    for server in servers:
        replies = await asyncio.gather(*(call(client, server, key, n) for n in fresh))
        assert replies == [401] * len(fresh)


async def test_a_mode_change_by_the_cli_takes_the_window_back_from_the_server(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    seen = Seen(deployment)
    key = await new_key(deployment)
    servers.append(server := start_server(deployment))
    base = int(time.time() * 1000) * 1000
    fresh = [base + 1000 * i for i in range(100)]
    assert [await call(client, server, key, n) for n in fresh] == [200] * 100
    assert seen.lease(key) not in (None, "")
    env = {**os.environ, **settings_env(deployment)}
    result = subprocess.run([sys.executable, "-m", "keygate", "key", "edit", key.api_key, "--replay-mode", "increasing"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert seen.lease(key) == "" and seen.remembered(key) == 100  # handed back by the server, at the CLI's request
    await asyncio.sleep(1.0)  # the change reaches the server (change log)
    assert [await call(client, server, key, n) for n in fresh[::10]] == [401] * 10
    assert await call(client, server, key, fresh[-1] + 1) == 200  # the next nonce: no ceiling to wait out


async def test_a_stalled_holder_is_revoked_and_accepts_no_replay_when_it_wakes(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    seen = Seen(deployment)
    key = await new_key(deployment)
    servers.append(holder := start_server(deployment))
    base = int(time.time() * 1000) * 1000
    fresh = [base + i for i in range(100)]
    assert [await call(client, holder, key, n) for n in fresh] == [200] * 100
    assert seen.lease(key) not in (None, "")
    servers.append(other := start_server(deployment))
    holder.process.send_signal(signal.SIGSTOP)
    try:
        env = {**os.environ, **settings_env(deployment)}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "keygate", "key", "edit", key.api_key, "--replay-mode", "increasing"],
                                env=env, capture_output=True, text=True, timeout=60)
        waited = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert waited >= 1.5, waited  # it waited for the hand-back, until the lease ran out, then revoked
        assert seen.lease(key) == "" and seen.ceiling(key) is None
        await asyncio.sleep(1.0)
        assert await asyncio.gather(*(call(client, other, key, n) for n in fresh)) == [401] * 100
        assert await call(client, other, key, fresh[-1] + 1) == 401  # at or below the ceiling: the price of a revocation
    finally:
        holder.process.send_signal(signal.SIGCONT)
    assert await call(client, holder, key, fresh[-1] + 1, waking=True) == 401
    assert await asyncio.gather(*(call(client, holder, key, n, waking=True) for n in fresh)) == [401] * 100
    await asyncio.sleep(1.0)  # caught up with the change log
    beyond = fresh[-1] + 10**9
    assert await call(client, holder, key, beyond) == 200
    assert await call(client, other, key, beyond) == 401  # increasing: used
    assert await call(client, other, key, beyond + 1) == 200


async def test_redis_away_while_a_key_is_held_fails_closed_within_two_seconds(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    """Redis is reached through a TCP proxy that is cut while the server holds the key's lease: from
    2 s after the cut no call is answered 200 (nothing decided from memory that Redis cannot back)."""
    from tcp_proxy import TcpProxy

    seen = Seen(deployment)
    key = await new_key(deployment)
    proxy = TcpProxy("127.0.0.1", 6379).start()
    try:
        via_proxy = deployment.model_copy(update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"})
        servers.append(server := start_server(via_proxy))
        base = int(time.time() * 1000) * 1000
        assert [await call(client, server, key, base + i) for i in range(50)] == [200] * 50
        assert seen.lease(key) not in (None, "")
        proxy.cut()
        cut = time.monotonic()
        late: list[tuple[float, int]] = []
        n = base + 50
        while time.monotonic() - cut < 4:
            r = await client.post(server.base_url + "/AP/GetUserPermissions", headers=key.headers(n))
            late.append((time.monotonic() - cut, r.status_code))
            n += 1
            await asyncio.sleep(0.02)
        assert all(status == 503 for at, status in late if at >= 2.0), late
        assert all(status in (200, 503) for _, status in late), late
        proxy.restore()
        # The lease ran out in Redis meanwhile: revoked, its ceiling is the key's floor (the price of a
        # lease lost), so the client goes on above it.
        n = base + 10**7
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = await client.post(server.base_url + "/AP/GetUserPermissions", headers=key.headers(n))
            if r.status_code == 200:
                break
            n += 1
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text  # back by itself
        accepted = [base + i for i in range(50)]
        replies = await asyncio.gather(*(call(client, server, key, m, waking=True) for m in accepted[:50]))
        assert replies == [401] * 50
    finally:
        proxy.close()


# ----- in memory, the rules are Redis's script's ---------------------------------------------------
nonce_steps = st.lists(st.one_of(st.integers(-40, 60), st.just(0), st.integers(-3 * SPREAD_GAP, -SPREAD_GAP)), min_size=1, max_size=60)


@hyp_settings(max_examples=60, deadline=None)
@given(steps=nonce_steps, limit=st.integers(8, 16), start=st.sampled_from([1_000, 10**15, 10**12 - 30]))
def test_a_leased_key_gets_the_verdicts_and_the_window_of_the_script(steps: list[int], limit: int, start: int) -> None:
    """The same claims on two keys: one leased (decided in memory, handed back at the end), one never
    leased (every claim Redis's script). Same verdicts, and Redis holds the same window after."""
    need(redis_available(), "Redis at 127.0.0.1:6379")
    from keygate.store.redis_state import RedisState

    async def run() -> None:
        namespace = f"kgtest{secrets.token_hex(4)}"
        leased, scripted = RedisState(REDIS_URL, namespace), RedisState(REDIS_URL, namespace)
        scripted.leases.may_take = lambda key: False  # type: ignore[method-assign]
        try:
            nonce, verdicts = start, []
            for step in steps:
                nonce = max(0, nonce + step)
                a = await leased.claim_window("held", str(nonce), limit, 86400)
                b = await scripted.claim_window("plain", str(nonce), limit, 86400)
                verdicts.append((nonce, a, b))
            assert all(a == b for _, a, b in verdicts), verdicts
            held = list(leased.leases.held)
            await leased.close()
            r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
            spread = r.hget(f"{namespace}:w:plain", "s") == "1"
            assert (r.hget(f"{namespace}:w:held", "s") == "1") == spread
            if not spread:  # random-style, a window forgets by the time of each claim: verdicts only
                assert held == ["held"] and scripted.leases.held == []
                [loaded] = (await scripted.leases.store.load(["plain"])).values()  # the window as Redis holds it
                assert loaded is not None and loaded.present == set(r.zrange(f"{namespace}:z:plain", 0, -1))
                assert r.zrange(f"{namespace}:z:held", 0, -1, withscores=True) == r.zrange(f"{namespace}:z:plain", 0, -1, withscores=True)
                assert r.hgetall(f"{namespace}:w:held") == r.hgetall(f"{namespace}:w:plain")
                assert r.get(f"{namespace}:n:held") == r.get(f"{namespace}:n:plain")
            assert r.get(f"{namespace}:L:held") in (None, "")  # handed back ('': it turned random-style)
            assert not r.exists(f"{namespace}:C:held")
            for k in r.scan_iter(f"{namespace}:*"):
                r.delete(k)
            r.close()
        finally:
            await leased.close()
            await scripted.close()

    asyncio.run(run())
