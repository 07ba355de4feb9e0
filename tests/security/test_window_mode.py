"""The default replay mode (``window``) accepts every real nonce style and refuses every replay.

Two real server processes share one database (and Redis, in the ``redis`` variant); clients sign the
way real ones do: millisecond timestamps in order and out of order under concurrency, random numbers
below 10^9 (a common APEX SDK), counters. Every accepted header set, replayed to either server, is
refused.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR
from support import REDIS_URL, Server, need, redis_available, start_server, stop_server


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


async def window_key(kg: Keygate, make_user) -> tuple[int, CreatedKey]:  # type: ignore[no-untyped-def]
    user = await make_user()
    return user.user_id, await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.WINDOW)


def headers(uid: int, created: CreatedKey, nonce: str) -> dict[str, str]:
    key = created.key.api_key
    return {"APIKey": key, "Signature": compute_signature(created.secret, nonce, uid, key), "UserId": str(uid), "Nonce": nonce}


async def send_all(servers: tuple[Server, Server], path: str, header_sets: list[dict[str, str]]) -> list[int]:
    """Send every header set at once, alternating between the two servers; the statuses, in order."""
    async with httpx.AsyncClient(timeout=30) as client:
        replies = await asyncio.gather(*(client.post(servers[i % 2].base_url + path, headers=h) for i, h in enumerate(header_sets)))
    return [r.status_code for r in replies]


async def assert_every_replay_refused(servers: tuple[Server, Server], header_sets: list[dict[str, str]]) -> None:
    for offset in (0, 1):  # each set to both servers
        statuses = await send_all(servers, "/AP/GetUserPermissions", header_sets[offset:] + header_sets[:offset])
        assert statuses == [401] * len(header_sets), statuses


async def test_random_nonces_below_1e9_all_sign_in_and_no_replay_does(servers, kg: Keygate, make_user) -> None:
    uid, created = await window_key(kg, make_user)
    sets = [headers(uid, created, str(n)) for n in random.sample(range(1, 10**9), 100)]
    async with httpx.AsyncClient(timeout=30) as client:
        for i, h in enumerate(sets):  # one after the other, as the SDK signs in
            r = await client.post(servers[i % 2].base_url + "/AP/AuthenticateUser", headers=h)
            assert r.status_code == 200 and r.json()["Authenticated"] is True, (i, r.text)
    await assert_every_replay_refused(servers, sets)


async def test_millisecond_nonces_out_of_order_under_concurrency(servers, kg: Keygate, make_user) -> None:
    uid, created = await window_key(kg, make_user)
    base = int(time.time() * 1000)
    for burst in range(4):  # 16 calls in flight at once, their nonces arriving in any order
        nonces = [str(base + burst * 16 + i) for i in range(16)]
        random.shuffle(nonces)
        sets = [headers(uid, created, n) for n in nonces]
        assert await send_all(servers, "/AP/GetUserPermissions", sets) == [200] * 16
        await assert_every_replay_refused(servers, sets)


async def test_counters_and_the_same_set_sent_sixteen_times_at_once(servers, kg: Keygate, make_user) -> None:
    uid, created = await window_key(kg, make_user)
    sets = [headers(uid, created, str(n)) for n in range(1, 41)]
    assert await send_all(servers, "/AP/GetUserPermissions", sets) == [200] * 40
    await assert_every_replay_refused(servers, sets)
    same = [headers(uid, created, "41")] * 16
    assert sorted(await send_all(servers, "/AP/AuthenticateUser", same)) == [200] + [401] * 15, "exactly one of 16 identical sets"


async def test_the_nonce_shown_at_creation_works_once(servers, kg: Keygate, make_user) -> None:
    """A client that reuses the creation nonce (as the seed page says) needs ``compatible``: it is told so."""
    uid, created = await window_key(kg, make_user)
    reused = headers(uid, created, created.key.nonce)
    async with httpx.AsyncClient(base_url=servers[0].base_url, timeout=30) as client:
        assert (await client.post("/AP/AuthenticateUser", headers=reused)).status_code == 200
        r = await client.post("/AP/AuthenticateUser", headers=reused)
        assert r.status_code == 401 and "already used" in r.json()["errormsg"]


async def test_an_increasing_key_forgets_only_below_its_floor(settings: Settings, make_user) -> None:
    """The bound: a key remembers its last N nonces; one forgotten can never be accepted again."""
    small = Keygate(settings.model_copy(update={"nonce_window_size": 16}), serving=False)
    await small.start(bootstrap_admin=False)
    try:
        user = await make_user()
        created = await small.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.WINDOW)
        from keygate.domain.errors import AuthenticationFailed
        from keygate.service.auth import KeyCredentials

        def creds(n: int) -> KeyCredentials:
            h = headers(user.user_id, created, str(n))
            return KeyCredentials(h["APIKey"], h["Signature"], user.user_id, h["Nonce"])

        base = 1_700_000_000_000
        for n in range(base, base + 40):
            await small.auth.principal_for_signature(creds(n), "127.0.0.1")
        for n in (base, base + 23, base + 39):  # forgotten (below the floor) or remembered: refused alike
            with pytest.raises(AuthenticationFailed):
                await small.auth.principal_for_signature(creds(n), "127.0.0.1")
        await small.auth.principal_for_signature(creds(base + 40), "127.0.0.1")
    finally:
        await small.close()
