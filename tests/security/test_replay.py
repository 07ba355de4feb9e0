"""Threat: a captured set of signed headers is replayed. Each key's replay mode decides what is refused."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from abuse_helpers import client_for, random_ip, signed

from keygate.domain.replay import ReplayMode
from keygate.service.principal import OPERATOR
from support import Server, start_server, stop_server

# Replay tests fail on purpose many times; throttling has its own tests.
LENIENT = {"throttle_ip_failures": 1000, "throttle_key_failures": 1000, "throttle_user_failures": 1000}


async def _user_and_key(kg, make_user, mode: ReplayMode | None):  # type: ignore[no-untyped-def]
    from keygate.domain.iprules import IpAllowlist

    user = await make_user()
    await kg.users.require(user.user_id)
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=mode)
    return user, created


async def test_increasing_mode_accepts_growing_millisecond_nonces_and_refuses_replays(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, created = await _user_and_key(kg, make_user, ReplayMode.INCREASING)
    assert created.key.replay_mode is ReplayMode.INCREASING
    now = int(time.time() * 1000)
    async with client_for(kg, random_ip()) as client:
        for nonce in (now, now + 1, now + 50):
            r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, str(nonce)))
            assert r.status_code == 200, r.text
        for stale in (now + 50, now + 1, now):
            r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, str(stale)))
            assert r.status_code == 401
            assert r.json()["Authenticated"] is False
            assert "greater than the last nonce" in r.json()["errormsg"]
        r = await client.post("/AP/GetUserInfo", headers=signed(created, user.user_id, str(now + 50)))
        assert r.status_code == 401, "a replayed per-request signature must be refused too"
        r = await client.post("/AP/GetUserInfo", headers=signed(created, user.user_id, str(now + 51)))
        assert r.status_code == 200, r.text


async def test_increasing_mode_explains_a_non_numeric_nonce(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, created = await _user_and_key(kg, make_user, ReplayMode.INCREASING)
    async with client_for(kg, random_ip()) as client:
        for nonce in ("abc", "-5", "18446744073709551616"):  # not an unsigned 64-bit integer
            r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, nonce))
            assert r.status_code == 401
            assert "unsigned 64-bit integer" in r.json()["errormsg"]
        r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "18446744073709551615"))
        assert r.status_code == 200, "the largest u64 is a valid nonce"


async def test_unique_mode_accepts_random_nonces_once(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, created = await _user_and_key(kg, make_user, ReplayMode.UNIQUE)
    async with client_for(kg, random_ip()) as client:
        for nonce in ("734190", "12", "random-string-nonce"):
            assert (await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, nonce))).status_code == 200
        r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "12"))
        assert r.status_code == 401
        assert "already used" in r.json()["errormsg"]


async def test_compatible_mode_accepts_the_nonce_shown_at_creation_every_time(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, created = await _user_and_key(kg, make_user, ReplayMode.COMPATIBLE)
    async with client_for(kg, random_ip()) as client:
        for _ in range(3):
            r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, created.key.nonce))
            assert r.status_code == 200, r.text


async def test_operator_default_applies_and_the_mode_is_shown_and_editable(strict_kg, make_user):
    kg = await strict_kg(default_replay_mode="unique", **LENIENT)
    user, created = await _user_and_key(kg, make_user, None)
    assert created.key.replay_mode is ReplayMode.UNIQUE
    await kg.users.require(user.user_id)
    views = [k.public_view() for k in await kg.keys.list(OPERATOR, user.user_id)]
    assert views[0]["ReplayMode"] == "unique"
    key = await kg.keys.update(OPERATOR, user.user_id, created.key.api_key, replay_mode=ReplayMode.COMPATIBLE)
    assert key.replay_mode is ReplayMode.COMPATIBLE
    async with client_for(kg, random_ip()) as client:
        for _ in range(2):
            assert (await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "7"))).status_code == 200


@pytest.mark.parametrize("mode", [ReplayMode.INCREASING, ReplayMode.UNIQUE])
async def test_two_nodes_accept_one_nonce_at_most_once_under_concurrency(settings, shared_state, strict_kg, make_user, mode):
    """Two server processes on one database (and one Redis) receive the same signed request at once."""
    kg = await strict_kg(**LENIENT)
    user, created = await _user_and_key(kg, make_user, mode)
    node_settings = settings.model_copy(update=dict(redis_url=shared_state))
    nodes: list[Server] = [start_server(node_settings), start_server(node_settings)]
    try:
        for round_ in range(3):
            nonce = str(int(time.time() * 1000) + round_ * 1000)
            headers = signed(created, user.user_id, nonce)
            async with httpx.AsyncClient(timeout=20) as http:
                replies = await asyncio.gather(*[
                    http.post(f"{nodes[i % 2].base_url}/AP/AuthenticateUser", headers=headers) for i in range(16)
                ])
            statuses = [r.status_code for r in replies]
            assert statuses.count(200) == 1, statuses
            assert all(s in (200, 401, 429) for s in statuses), statuses
    finally:
        for node in nodes:
            stop_server(node)
