"""``window`` claims decided in memory on SQLite (store/window_leases.py), and every promise kept.

Real server processes on one SQLite file, a client signing each request with a fresh nonce:

- A key in steady use on one process is decided in that process's memory: nothing is written per
  claim (on the code before, every claim wrote its nonce); stopped, the server hands the exact window
  back, and a new process refuses every replay and accepts the client's next nonce at once.
- Killed (``kill -9``) while deciding in memory (a client in a tight loop), the holder's accepted nonces are never accepted
  again, by the restarted process or another one; a client sending microsecond timestamps goes on
  at once after the restart.
- Two processes taking turns on one key: the lease is handed over once, every fresh set accepted
  once, every replay refused by both.
- A change of the key's replay mode by the CLI, while a server decides the key in memory: the
  server hands the window back (no floor raised), and the new mode refuses every accepted nonce and
  accepts the next one.
- In memory the rules are the database's (hypothesis: the same verdicts as ``_KeyWindow``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from lease_support import Key, Micros, call, client, load_until_killed, new_key, servers  # noqa: F401  (fixtures, used by name)

from keygate.config import Settings
from keygate.domain.replay import SPREAD_GAP
from keygate.service import Keygate
from keygate.store.shared_state import WindowClaim, _KeyWindow
from keygate.store.window_leases import HeldWindow
from support import Server, settings_env, start_server


@pytest.fixture
def deployment(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'keygate.db'}",
                    master_key=base64.b64encode(secrets.token_bytes(32)).decode(), default_replay_mode="window",
                    throttle_ip_failures=1_000_000, throttle_key_failures=1_000_000, throttle_user_failures=1_000_000)


def db(settings: Settings) -> sqlite3.Connection:
    return sqlite3.connect(str(Path(settings.data_dir) / "keygate.db"), timeout=10)


def stored(settings: Settings, key: Key) -> tuple[int, int]:
    """(rows in used_nonces, nonce_count) of the key, as the database holds them."""
    with db(settings) as conn:
        rows = conn.execute("SELECT count(*) FROM used_nonces WHERE api_key = ?", (key.api_key,)).fetchone()[0]
        count = conn.execute("SELECT nonce_count FROM api_keys WHERE api_key = ?", (key.api_key,)).fetchone()[0]
    return int(rows), int(count)


def leases(settings: Settings, key: Key) -> list[tuple[str, bool]]:
    with db(settings) as conn:
        return [(r[0], bool(r[1])) for r in conn.execute("SELECT holder, contended FROM nonce_leases WHERE api_key = ?", (key.api_key,))]


async def test_a_key_in_steady_use_is_decided_in_memory_and_handed_back_exactly(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    key = await new_key(deployment)
    servers.append(server := start_server(deployment))
    base = int(time.time() * 1000) * 1000
    assert await call(client, server, key, base) == 200  # the first claim: the database decides, and leases the key
    fresh = [base + 10 * i for i in range(1, 301)]
    assert [await call(client, server, key, n) for n in fresh] == [200] * 300
    late = [base + 10 * i - 5 for i in range(250, 300)]  # out of order, never used: accepted (the window remembers)
    assert [await call(client, server, key, n) for n in late] == [200] * 50
    replays = fresh[::7] + late[::5] + [base]
    assert [await call(client, server, key, n) for n in replays] == [401] * len(replays)
    [(holder, contended)] = leases(deployment, key)
    assert holder and not contended
    assert stored(deployment, key) == (1, 1)  # 350 accepted; written: the first one only (each one, before)

    server.process.send_signal(signal.SIGTERM)  # a clean stop hands the exact window back
    server.process.wait(timeout=15)
    assert stored(deployment, key) == (351, 351) and leases(deployment, key) == []
    servers.append(again := start_server(deployment))
    assert [await call(client, again, key, n) for n in replays + fresh[1::9]] == [401] * (len(replays) + len(fresh[1::9]))
    assert await call(client, again, key, fresh[-1] + 1) == 200  # no floor raised: the very next nonce is fine
    assert await call(client, again, key, base + 2995) == 200  # nor an out-of-order one the window never saw


async def test_after_kill_9_no_nonce_the_holder_accepted_is_accepted_again(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    key = await new_key(deployment)
    servers.append(victim := start_server(deployment))
    servers.append(other := start_server(deployment))
    answered: list[int] = []
    micros = Micros()
    workers = [asyncio.create_task(load_until_killed(client, victim, key, micros, answered))]
    await asyncio.sleep(1.5)
    assert leases(deployment, key)[0][0] != ""  # held: decided in the victim's memory
    victim.process.kill()  # kill -9, under load: nothing of its window written
    victim.process.wait()
    await asyncio.gather(*workers)
    assert len(answered) >= 20, len(answered)
    assert stored(deployment, key)[0] < len(answered)  # what was decided in memory died with it

    servers.append(restarted := start_server(deployment))
    for target in (restarted, other):
        replies = await asyncio.gather(*(call(client, target, key, n) for n in answered))
        assert replies == [401] * len(answered)
    assert await call(client, restarted, key, micros()) == 200  # a restart outlasts the reserved ceiling
    assert await call(client, other, key, micros()) == 200


async def test_two_processes_taking_turns_hand_the_lease_over_once(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    key = await new_key(deployment)
    servers.extend([start_server(deployment), start_server(deployment)])
    base = int(time.time() * 1000) * 1000
    fresh = [base + i for i in range(200)]
    started = time.monotonic()
    outcomes = [await call(client, servers[i % 2], key, n) for i, n in enumerate(fresh)]
    assert outcomes == [200] * len(fresh)
    assert time.monotonic() - started < 15
    assert leases(deployment, key) == [("", False)]  # handed over, then shared: decided by the database
    for server in servers:
        replies = await asyncio.gather(*(call(client, server, key, n) for n in fresh))
        assert replies == [401] * len(fresh)


async def test_a_mode_change_by_the_cli_takes_the_window_back_from_the_server(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    key = await new_key(deployment)
    servers.append(server := start_server(deployment))
    base = int(time.time() * 1000) * 1000
    fresh = [base + 1000 * i for i in range(100)]
    assert [await call(client, server, key, n) for n in fresh] == [200] * 100
    assert leases(deployment, key)[0][0] not in ("",)
    env = {**os.environ, **settings_env(deployment)}
    result = subprocess.run([sys.executable, "-m", "keygate", "key", "edit", key.api_key, "--replay-mode", "increasing"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert leases(deployment, key) == [("", False)]  # handed back by the server, at the CLI's request
    await asyncio.sleep(1.0)  # the change reaches the server (change log)
    assert [await call(client, server, key, n) for n in fresh[::10]] == [401] * 10
    assert await call(client, server, key, fresh[-1] + 1) == 200  # the next nonce: no ceiling to wait out


# ----- the rules in memory are the database's ------------------------------------------------------
nonce_steps = st.lists(st.one_of(st.integers(-40, 60), st.just(0), st.integers(-3 * SPREAD_GAP, -SPREAD_GAP)), min_size=1, max_size=120)


@hyp_settings(max_examples=200, deadline=None)
@given(steps=nonce_steps, limit=st.integers(16, 24), start=st.sampled_from([1_000, 10**15, 10**12 - 30]))
def test_held_window_gives_the_database_paths_verdicts(steps: list[int], limit: int, start: int) -> None:
    now = datetime.now(timezone.utc)
    reference = _KeyWindow(None, None, False, 0)
    held = HeldWindow(None, None, [])
    nonce = start
    for step in steps:
        nonce = max(0, nonce + step)
        text = str(nonce)
        expected, undecided = reference.decide([(0, WindowClaim("k", text, limit, 60))], now)
        verdict = held.decide(text, nonce, limit)
        if undecided:
            assert verdict is None
            return  # random-style from here: the database's
        assert verdict == (0 in expected), (text, steps)
        assert held.present == reference.present and held.count == reference.count
        assert (str(held.floor).zfill(20) if held.floor is not None else None) == reference.floor


# ----- the bound: idle keys leave, and at most MAX_HELD are held -----------------------------------
async def test_idle_keys_are_handed_back_and_few_keys_are_held(deployment: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from keygate.store import window_leases
    from keygate.store.shared_state import SqlState

    monkeypatch.setattr(window_leases, "IDLE_SECONDS", 0.5)
    monkeypatch.setattr(window_leases, "MAX_HELD", 2)
    keys = [await new_key(deployment) for _ in range(3)]
    kg = Keygate(deployment, serving=False)
    await kg.start(bootstrap_admin=False)
    state = SqlState(kg.engine)
    try:
        assert state.leases is not None
        base = int(time.time() * 1000)
        for i, key in enumerate(keys):
            assert await state.claim_window(key.api_key, str(base + i), 4096, 86400)
        assert sorted(state.leases.held) == sorted(k.api_key for k in keys[:2])  # the third: the database's
        for n in range(1, 50):
            assert await state.claim_window(keys[0].api_key, str(base + 10 * n), 4096, 86400)
        assert not await state.claim_window(keys[0].api_key, str(base + 10), 4096, 86400)
        assert stored(deployment, keys[0]) == (1, 1)
        await asyncio.sleep(1.5)  # unused for longer than IDLE_SECONDS: handed back, exactly
        assert state.leases.held == []
        assert stored(deployment, keys[0]) == (50, 50) and leases(deployment, keys[0]) == []
    finally:
        await state.close()
        await kg.close()


async def test_claims_queued_while_the_key_is_leased_are_decided_not_refused(deployment: Settings) -> None:
    """A client that starts with many calls at once: the first batch leases the key, and the claims
    that queued behind it meet this process's own fresh lease. They must be decided in memory, not
    taken for a lapsed lease (revoking it would raise the floor over the client's next nonces)."""
    from keygate.store.shared_state import SqlState

    key = await new_key(deployment)
    kg = Keygate(deployment, serving=False)
    await kg.start(bootstrap_admin=False)
    state = SqlState(kg.engine)
    try:
        base = int(time.time() * 1000) * 1000
        # Another writer (another process) holds the write lock: the first batch goes to a pooled
        # connection and waits, and the second wave queues behind it.
        locked, release = threading.Event(), threading.Event()

        def writer() -> None:
            with db(deployment) as other:
                other.execute("BEGIN IMMEDIATE")
                locked.set()
                release.wait(5)
                other.execute("ROLLBACK")

        thread = threading.Thread(target=writer)
        thread.start()
        locked.wait(5)

        async def wave(number: int) -> list[bool]:
            nonces = [str(base + 100 * number + i) for i in range(32)]
            return await asyncio.gather(*(state.claim_window(key.api_key, n, 4096, 86400) for n in nonces))

        first = asyncio.create_task(wave(0))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(wave(1))
        await asyncio.sleep(0.05)
        release.set()
        thread.join()
        assert all(await first) and all(await second)
        assert all(await wave(2))
        assert state.leases is not None and state.leases.held == [key.api_key]
        [(holder, _)] = leases(deployment, key)
        assert holder == state.leases.holder
    finally:
        await state.close()
        await kg.close()


async def test_a_key_leased_during_a_renewal_is_kept(deployment: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal reads which leases are this process's, then (on a busy database) waits; a key leased
    meanwhile is not among the rows it read, and must not be taken for a lost lease."""
    from keygate.store import window_leases
    from keygate.store.shared_state import SqlState

    first, second = await new_key(deployment), await new_key(deployment)
    kg = Keygate(deployment, serving=False)
    await kg.start(bootstrap_admin=False)
    state = SqlState(kg.engine)
    leases_ = state.leases
    assert leases_ is not None
    store = leases_.store
    assert isinstance(store, window_leases.SqliteLeaseStore)
    original = store._run

    async def slow_renewal(work):  # type: ignore[no-untyped-def]
        result = await original(work)
        if isinstance(result, dict) and all(isinstance(v, bool) for v in result.values()):
            await asyncio.sleep(0.3)  # the renewal's reply, late
        return result

    monkeypatch.setattr(store, "_run", slow_renewal)
    try:
        base = int(time.time() * 1000) * 1000
        assert await state.claim_window(first.api_key, str(base), 4096, 86400)  # leased: renewals begin
        renewal = asyncio.create_task(leases_.renew())
        await asyncio.sleep(0.05)  # the renewal has read its rows and waits
        assert await state.claim_window(second.api_key, str(base), 4096, 86400)  # leased meanwhile
        await renewal
        assert sorted(leases_.held) == sorted([first.api_key, second.api_key])
        assert await state.claim_window(second.api_key, str(base + 1), 4096, 86400)  # the next nonce: fine
    finally:
        await state.close()
        await kg.close()


async def test_a_stalled_holder_is_revoked_and_accepts_no_replay_when_it_wakes(
        deployment: Settings, client: httpx.AsyncClient, servers: list[Server]) -> None:
    """The holder stops (``SIGSTOP``: a stalled process) while the CLI changes the key's mode: the CLI
    waits for a hand-back that cannot come until the lease has run out (2 s after its last renewal),
    then revokes it (the floor rises to its ceiling).
    Another process refuses every accepted nonce; the stalled one, woken, refuses them too, and a
    fresh nonce above the ceiling is accepted everywhere."""
    key = await new_key(deployment)
    servers.append(holder := start_server(deployment))
    base = int(time.time() * 1000) * 1000
    fresh = [base + i for i in range(100)]
    assert [await call(client, holder, key, n) for n in fresh] == [200] * 100
    assert leases(deployment, key)[0][0] != ""
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
        assert leases(deployment, key) == [("", False)]
        await asyncio.sleep(1.0)
        assert await asyncio.gather(*(call(client, other, key, n) for n in fresh)) == [401] * 100
        assert await call(client, other, key, fresh[-1] + 1) == 401  # at or below the ceiling: the price of a revocation
    finally:
        holder.process.send_signal(signal.SIGCONT)
    # At once, while it may still believe in its lease: it ran out while the process slept.
    assert await call(client, holder, key, fresh[-1] + 1, waking=True) == 401
    assert await asyncio.gather(*(call(client, holder, key, n, waking=True) for n in fresh)) == [401] * 100
    await asyncio.sleep(1.0)  # caught up with the change log
    beyond = fresh[-1] + 10**9
    assert await call(client, holder, key, beyond) == 200
    assert await call(client, other, key, beyond) == 401  # increasing: used
    assert await call(client, other, key, beyond + 1) == 200


async def test_a_holder_whose_lease_ran_out_decides_nothing_from_memory(deployment: Settings) -> None:
    """Two deciders on one file (two ``SqlState``: two processes' worth). A's lease runs out unrenewed
    (a stall); B's next claim revokes it and raises the floor to its ceiling. A, back, must not decide
    from the window it still holds in memory: what it answers is the database's (and B's lease's)."""
    from keygate.store.shared_state import SqlState

    key = await new_key(deployment)
    kg = Keygate(deployment, serving=False)
    await kg.start(bootstrap_admin=False)
    a, b = SqlState(kg.engine), SqlState(kg.engine)
    try:
        assert a.leases is not None and b.leases is not None
        base = int(time.time() * 1000) * 1000
        assert all([await a.claim_window(key.api_key, str(base + i), 4096, 86400) for i in range(10)])
        assert a.leases.held == [key.api_key]
        a.leases._held[key.api_key].valid_until = 0.0  # A stalls: its lease lapses here ...
        if a.leases._task is not None:
            a.leases._task.cancel()  # ... and it stops renewing
        with db(deployment) as conn:  # ... and there (the end passed)
            conn.execute("UPDATE nonce_leases SET until = ? WHERE api_key = ?", (time.time() - 1, key.api_key))
        assert not await b.claim_window(key.api_key, str(base + 11), 4096, 86400)  # revoked: floor at the ceiling
        assert await b.claim_window(key.api_key, str(base + 10**7), 4096, 86400)  # above it: fine, leased by B
        assert not await a.claim_window(key.api_key, str(base + 12), 4096, 86400)  # A's memory would have said yes
        assert not await a.claim_window(key.api_key, str(base + 5), 4096, 86400)
        assert await a.claim_window(key.api_key, str(base + 10**7 + 1), 4096, 86400)
        assert a.leases.held == [] or a.leases.held == [key.api_key]  # dropped, maybe leased anew after B's hand-back
        assert not await b.claim_window(key.api_key, str(base + 10**7 + 1), 4096, 86400)
    finally:
        await a.close()
        await b.close()
        await kg.close()
