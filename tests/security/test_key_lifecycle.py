"""Key lifecycle: expiry, secret rotation with a grace period, and the operator's key options."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from abuse_helpers import client_for, random_ip, signed

from keygate.domain.errors import InvalidRequest
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import Permission
from keygate.domain.replay import ReplayMode
from keygate.service.clock import utcnow
from keygate.service.principal import OPERATOR

LENIENT = {"throttle_ip_failures": 1000, "throttle_key_failures": 1000, "throttle_user_failures": 1000, "lockout_failures": 100}


async def _owner(kg, make_user):  # type: ignore[no-untyped-def]
    user = await make_user()
    return user, OPERATOR


async def test_an_expired_key_fails_with_a_clear_message_and_shows_as_expired(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, owner = await _owner(kg, make_user)
    created = await kg.keys.create(owner, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE,
                                   expires_at=utcnow() + timedelta(seconds=1))
    async with client_for(kg, random_ip()) as client:
        assert (await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "1"))).status_code == 200
        listed = (await kg.keys.list(owner, user.user_id))[0].public_view()
        assert listed["ExpiresAt"] is not None
        await asyncio.sleep(1.1)
        r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "1"))
        assert r.status_code == 401
        assert r.json()["errormsg"] == "This API key has expired; create a new one"
        bad = {**signed(created, user.user_id, "1"), "Signature": "0" * 64}
        assert (await client.post("/AP/AuthenticateUser", headers=bad)).json()["errormsg"] == "Invalid credentials", \
            "without the secret, an expired key looks like any other failure"


async def test_expiry_in_the_past_is_refused(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, owner = await _owner(kg, make_user)
    with pytest.raises(InvalidRequest, match="future"):
        await kg.keys.create(owner, user.user_id, frozenset(), IpAllowlist(), expires_at=utcnow() - timedelta(seconds=1))
    assert await kg.keys.list(owner, user.user_id) == []


async def test_rotation_shows_a_new_secret_once_and_the_old_one_works_during_the_grace(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, owner = await _owner(kg, make_user)
    old = await kg.keys.create(owner, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE)
    new = await kg.keys.rotate_secret(owner, user.user_id, old.key.api_key, grace_seconds=1)
    assert new.secret != old.secret and new.key.api_key == old.key.api_key and new.key.nonce != old.key.nonce
    assert "APISecret" in new.reveal() and "APISecret" not in new.key.public_view()
    async with client_for(kg, random_ip()) as client:
        assert (await client.post("/AP/AuthenticateUser", headers=signed(new, user.user_id, "1"))).status_code == 200
        assert (await client.post("/AP/AuthenticateUser", headers=signed(old, user.user_id, "1"))).status_code == 200
        await asyncio.sleep(1.1)
        assert (await client.post("/AP/AuthenticateUser", headers=signed(old, user.user_id, "1"))).status_code == 401
        assert (await client.post("/AP/AuthenticateUser", headers=signed(new, user.user_id, "1"))).status_code == 200


async def test_rotation_without_grace_stops_the_old_secret_and_its_sessions_at_once(strict_kg, make_user):
    kg = await strict_kg(**LENIENT)
    user, owner = await _owner(kg, make_user)
    old = await kg.keys.create(owner, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE)
    async with client_for(kg, random_ip()) as client:
        token = (await client.post("/AP/AuthenticateUser", headers=signed(old, user.user_id, "1"))).json()["SessionToken"]
        password = (await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})).json()
        r = await client.post("/AP/RotateUserAPIKey", headers={"aptoken": password["SessionToken"]},
                              json={"APIKey": old.key.api_key, "GraceSeconds": 0})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        new_secret = r.json()["APISecret"]
        assert new_secret != old.secret
        assert (await client.post("/AP/GetUserInfo", headers={"aptoken": token})).status_code == 401
        assert (await client.post("/AP/AuthenticateUser", headers=signed(old, user.user_id, "2"))).status_code == 401
        listed = await client.post("/AP/GetUserAPIKeys", headers={"aptoken": password["SessionToken"]})
        assert new_secret not in listed.text
        bad = await client.post("/AP/RotateUserAPIKey", headers={"aptoken": password["SessionToken"]},
                                json={"APIKey": old.key.api_key, "GraceSeconds": -1})
        assert bad.status_code == 400 and "GraceSeconds" in bad.json()["errormsg"]


async def test_withdraw_keys_can_be_required_to_have_an_allowlist(strict_kg, make_user):
    kg = await strict_kg(require_allowlist_for_withdraw=True, **LENIENT)
    user, owner = await _owner(kg, make_user)
    with pytest.raises(InvalidRequest, match="Withdraw permission must have an IP allowlist"):
        await kg.keys.create(owner, user.user_id, frozenset({Permission.WITHDRAW}), IpAllowlist())
    created = await kg.keys.create(owner, user.user_id, frozenset({Permission.WITHDRAW}), IpAllowlist.parse("203.0.113.0/24"))
    with pytest.raises(InvalidRequest, match="IP allowlist"):
        await kg.keys.update(owner, user.user_id, created.key.api_key, ip_allowlist=IpAllowlist())
    trading = await kg.keys.create(owner, user.user_id, frozenset({Permission.TRADING}), IpAllowlist())
    with pytest.raises(InvalidRequest, match="IP allowlist"):
        await kg.keys.update(owner, user.user_id, trading.key.api_key, permissions=frozenset({Permission.WITHDRAW}))


async def test_keys_without_allowlist_expire_after_days_unused(strict_kg, make_user):
    strict = await strict_kg(key_max_idle_days_without_allowlist=30, cache_ttl_seconds=0.05, **LENIENT)
    user, owner = await _owner(strict, make_user)
    open_key = await strict.keys.create(owner, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE)
    fenced = await strict.keys.create(owner, user.user_id, frozenset(), IpAllowlist.parse("0.0.0.0/0"), replay_mode=ReplayMode.COMPATIBLE)
    # Age both keys by 31 days in the store, as if they had been created then and never used.
    from sqlalchemy import update

    from keygate.store.tables import api_keys

    async with strict.engine.begin() as conn:
        await conn.execute(update(api_keys).where(api_keys.c.user_id == user.user_id)
                           .values(created_at=utcnow() - timedelta(days=31)))
    await asyncio.sleep(0.1)  # past the cache TTL: the service sees what the store now says
    async with client_for(strict, random_ip()) as client:
        r = await client.post("/AP/AuthenticateUser", headers=signed(open_key, user.user_id, "1"))
        assert r.status_code == 401 and "went unused for 30 days" in r.json()["errormsg"]
        assert (await client.post("/AP/AuthenticateUser", headers=signed(fenced, user.user_id, "1"))).status_code == 200
