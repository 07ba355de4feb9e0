"""``window`` claims are decided in batches (store/batcher.py), and stay exactly as safe.

- Concurrent claims share one transaction (one Redis script call): far fewer statements / round
  trips than claims, with every claim decided as if one after the other (a duplicate in the batch
  accepted once, a refused claim refusing only itself).
- Two real server processes on one database (and Redis): hundreds of concurrent fresh header sets,
  each also sent at the same instant to the other process: exactly one of each pair accepted; every
  later replay, to either process, refused.
- A server killed (``kill -9``) under a load of signed calls, then restarted: no header set answered
  200 before the kill is accepted after it (a reply follows its claim's commit).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiosqlite
import httpx
import pytest
from sqlalchemy import event

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR
from keygate.store.redis_state import RedisState
from keygate.store.shared_state import SqlState
from support import REDIS_URL, Server, need, redis_available, start_server, stop_server

N = 64
LIMIT, WINDOW = 4096, 86400


async def window_key(kg: Keygate, make_user) -> tuple[int, CreatedKey]:  # type: ignore[no-untyped-def]
    user = await make_user()
    return user.user_id, await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.WINDOW)


def headers(uid: int, created: CreatedKey, nonce: str) -> dict[str, str]:
    key = created.key.api_key
    return {"APIKey": key, "Signature": compute_signature(created.secret, nonce, uid, key), "UserId": str(uid), "Nonce": nonce}


def batch_of_claims(key_a: str, key_b: str) -> tuple[list[tuple[str, str]], list[bool]]:
    """N claims on two keys, with the expected outcome of each: fresh millisecond nonces, one
    duplicate inside the batch (the first accepted, the second refused), and one random nonce."""
    base = int(time.time() * 1000)
    claims = [(key_a if i % 2 else key_b, str(base + i)) for i in range(N - 2)]
    claims.insert(10, claims[3])  # the same claim again, later in the same batch
    claims.append((key_a, "not-a-number-" + secrets.token_hex(4)))  # turns key_a random-style, in the batch
    expected = [True] * len(claims)
    expected[10] = False
    return claims, expected


async def test_concurrent_claims_share_a_transaction(kg: Keygate, make_user, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    state = SqlState(kg.engine)
    (_, a), (_, b) = await window_key(kg, make_user), await window_key(kg, make_user)
    claims, expected = batch_of_claims(a.key.api_key, b.key.api_key)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    hops: list[object] = []  # on SQLite: calls into the connection's thread (each statement was one)
    original = aiosqlite.Connection._execute

    async def counted(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(fn)
        return await original(self, fn, *args, **kwargs)

    event.listen(kg.engine.sync_engine, "before_cursor_execute", count)
    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    try:
        results = await asyncio.gather(*(state.claim_window(k, n, LIMIT, WINDOW) for k, n in claims))
    finally:
        event.remove(kg.engine.sync_engine, "before_cursor_execute", count)
        monkeypatch.undo()
    assert list(results) == expected
    # One transaction for the batch: a handful of statements (plus the change log's polls meanwhile),
    # where one transaction per claim took five or more each.
    assert len(statements) < N // 2, statements
    assert len(hops) < N // 2, len(hops)
    replays = await asyncio.gather(*(state.claim_window(k, n, LIMIT, WINDOW) for k, n in claims))
    assert not any(replays)


async def test_sqlite_claims_run_on_the_loops_own_connection_and_wait_for_another_writer(tmp_path: Path,
                                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: a batch is decided on the event loop's own connection, without a hop to aiosqlite's
    thread; while another connection (another process) holds the write lock, it never waits on the
    loop: the batch goes to a pooled connection, which waits for the lock, and every claim is still
    decided exactly once."""
    kg = Keygate(Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'keygate.db'}",
                          master_key=base64.b64encode(secrets.token_bytes(32)).decode()), serving=False)
    await kg.start(bootstrap_admin=False)
    made = []
    for name in ("alice", "bob"):
        user = await kg.users.create(OPERATOR, name, secrets.token_urlsafe(16))
        made.append(await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.WINDOW))
    a, b = made
    state = SqlState(kg.engine)
    claims, expected = batch_of_claims(a.key.api_key, b.key.api_key)
    hops: list[object] = []
    original = aiosqlite.Connection._execute

    async def counted(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(fn)
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    results = await asyncio.gather(*(state.claim_window(k, n, LIMIT, WINDOW) for k, n in claims[:-1]))
    assert list(results) == expected[:-1] and hops == []
    direct = state._direct._db  # type: ignore[union-attr]
    assert direct is not None  # durable as the pool's connections, and it never checkpoints (their commits do)
    assert direct.execute("PRAGMA synchronous").fetchone() == (1,) and direct.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)

    # Another writer holds the lock for 0.6 s, in a thread of its own (as another process would).
    path = kg.engine.url.database
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(5)
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    await asyncio.to_thread(locked.wait, 5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not release.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    base = int(time.time() * 1000) + 10_000
    fresh = [(a.key.api_key, str(base + i)) for i in range(20)]
    started = time.monotonic()
    ticking = asyncio.create_task(ticker())
    pending = asyncio.gather(*(state.claim_window(k, n, LIMIT, WINDOW) for k, n in fresh + fresh[:5]))
    await asyncio.sleep(0.6)
    release.set()
    decided = await pending
    await ticking
    holder.join(5)
    assert ticks >= 30, "the event loop was held while another connection had the lock"
    assert time.monotonic() - started >= 0.6 and hops, "the batch waited for the lock on a pooled connection"
    assert list(decided) == [True] * 20 + [False] * 5
    assert not any(await asyncio.gather(*(state.claim_window(k, n, LIMIT, WINDOW) for k, n in fresh)))
    await state.close()
    await kg.close()


async def test_concurrent_claims_share_a_redis_call(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    need(redis_available(), "Redis at 127.0.0.1:6379")
    namespace = f"kgbatch{secrets.token_hex(4)}"
    state = RedisState(REDIS_URL, namespace)
    monitor = await asyncio.create_subprocess_exec("redis-cli", "-u", REDIS_URL, "monitor", stdout=asyncio.subprocess.PIPE)
    try:
        assert monitor.stdout is not None
        assert b"OK" in await asyncio.wait_for(monitor.stdout.readline(), 5)
        await state.ping()  # the connection is made before the count starts
        claims, expected = batch_of_claims("key-a-" + namespace, "key-b-" + namespace)
        results = await asyncio.gather(*(state.claim_window(k, n, LIMIT, WINDOW) for k, n in claims))
        assert list(results) == expected
        replays = await asyncio.gather(*(state.claim_window(k, n, LIMIT, WINDOW) for k, n in claims))
        assert not any(replays)
        await asyncio.sleep(0.3)
    finally:
        monitor.terminate()
        out, _ = await monitor.communicate()
        await state.close()
    # Round trips that carry a claim: script calls from a client (not the commands the script runs).
    calls = [line for line in out.decode().splitlines()
             if namespace in line and "lua]" not in line and ('"EVALSHA"' in line or '"EVAL"' in line)]
    assert 2 <= len(calls) < N // 2, calls  # today: one script call per claim, 2 N in all


# ----- two real processes ---------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["database", "redis"])
def servers(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[Server, Server]]:
    if request.param == "redis":
        need(redis_available(), "Redis at 127.0.0.1:6379")
    shared = settings.model_copy(update={"redis_url": REDIS_URL if request.param == "redis" else None,
                                         "default_replay_mode": "window"})
    a, b = start_server(shared), start_server(shared)
    yield a, b
    stop_server(a)
    stop_server(b)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
        yield c


async def test_many_fresh_sets_each_raced_by_its_replay_on_the_other_process(
        servers: tuple[Server, Server], kg: Keygate, make_user, client: httpx.AsyncClient) -> None:  # type: ignore[no-untyped-def]
    uid, created = await window_key(kg, make_user)
    base = int(time.time() * 1000)
    sets = [headers(uid, created, str(base + i)) for i in range(120)]

    async def pair(i: int, h: dict[str, str]) -> list[int]:  # the set to one process, its replay to the other, at once
        replies = await asyncio.gather(*(client.post(servers[(i + j) % 2].base_url + "/AP/GetUserPermissions", headers=h)
                                         for j in (0, 1)))
        assert all(r.status_code in (200, 401) for r in replies), [r.text for r in replies]
        return sorted(r.status_code for r in replies)

    outcomes = await asyncio.gather(*(pair(i, h) for i, h in enumerate(sets)))
    assert all(o == [200, 401] for o in outcomes), [o for o in outcomes if o != [200, 401]][:10]
    for server in servers:  # and every one of them, replayed later to either process, is refused
        replies = await asyncio.gather(*(client.post(server.base_url + "/AP/GetUserPermissions", headers=h) for h in sets))
        assert [r.status_code for r in replies] == [401] * len(sets), [r.text for r in replies if r.status_code != 401]


async def test_no_set_answered_before_a_kill_is_accepted_after_it(
        settings: Settings, servers: tuple[Server, Server], kg: Keygate, make_user,  # type: ignore[no-untyped-def]
        client: httpx.AsyncClient) -> None:
    uid, created = await window_key(kg, make_user)
    same = settings.model_copy(update={"redis_url": servers[0].env.get("KEYGATE_REDIS_URL") or None,
                                       "default_replay_mode": "window"})
    victim = start_server(same)
    answered: list[dict[str, str]] = []
    counter = iter(range(int(time.time() * 1000), 2**62))

    async def load() -> None:
        while victim.process.poll() is None:
            h = headers(uid, created, str(next(counter)))
            try:
                r = await client.post(victim.base_url + "/AP/GetUserPermissions", headers=h)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                answered.append(h)

    workers = [asyncio.create_task(load()) for _ in range(16)]
    try:
        await asyncio.sleep(1.5)
        victim.process.kill()  # kill -9, under load
        victim.process.wait()
        await asyncio.gather(*workers)
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
    assert len(answered) >= 10, len(answered)  # (a loaded machine answers few in 1.5 s)
    restarted = start_server(same)
    try:
        for target in (restarted, servers[1]):
            replies = await asyncio.gather(*(client.post(target.base_url + "/AP/GetUserPermissions", headers=h) for h in answered))
            assert [r.status_code for r in replies] == [401] * len(answered)
    finally:
        stop_server(restarted)
