"""Threat: guessing secrets and passwords. Failures are throttled per IP, key and user; users lock out."""

from __future__ import annotations

import asyncio

from abuse_helpers import client_for, random_ip, signed

from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.service.principal import OPERATOR

BAD_SIGNATURE = "0" * 64


async def _key(kg, user_id: int):  # type: ignore[no-untyped-def]
    owner = await kg.users.require(user_id)
    return await kg.keys.create(OPERATOR, user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE)


async def test_failures_past_the_threshold_get_429_with_growing_retry_after(strict_kg, make_user):
    kg = await strict_kg()
    user = await make_user()
    created = await _key(kg, user.user_id)
    bad = {**signed(created, user.user_id, "1"), "Signature": BAD_SIGNATURE}
    async with client_for(kg, random_ip()) as client:
        statuses = [(await client.post("/AP/AuthenticateUser", headers=bad)).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        waits = []
        for _ in range(3):
            r = await client.post("/AP/AuthenticateUser", headers=bad)
            assert r.status_code == 429
            assert r.json()["Authenticated"] is False and r.json()["errormsg"]
            waits.append(int(r.headers["Retry-After"]))
        assert waits[0] >= 1 and waits[1] > waits[0] and waits[2] > waits[1], waits


async def test_a_correct_signature_is_never_slowed_by_the_throttle(strict_kg, make_user):
    kg = await strict_kg(lockout_failures=100)
    user = await make_user()
    created = await _key(kg, user.user_id)
    ip = random_ip()
    async with client_for(kg, ip) as client:
        bad = {**signed(created, user.user_id, "1"), "Signature": BAD_SIGNATURE}
        for _ in range(5):
            await client.post("/AP/AuthenticateUser", headers=bad)
        assert (await client.post("/AP/AuthenticateUser", headers=bad)).status_code == 429
        good = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "2"))
        assert good.status_code == 200, good.text


async def test_unknown_keys_from_one_ip_are_throttled_per_ip(strict_kg):
    kg = await strict_kg()
    async with client_for(kg, random_ip()) as client:
        statuses = []
        for i in range(5):
            headers = {"APIKey": f"{i:032x}", "Signature": BAD_SIGNATURE, "UserId": "1", "Nonce": "1"}
            statuses.append((await client.post("/AP/AuthenticateUser", headers=headers)).status_code)
        assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]
    async with client_for(kg, random_ip()) as other:
        headers = {"APIKey": "f" * 32, "Signature": BAD_SIGNATURE, "UserId": "1", "Nonce": "1"}
        assert (await other.post("/AP/AuthenticateUser", headers=headers)).status_code == 401, "another IP is not punished"


async def test_a_throttled_password_guesser_is_refused_even_with_the_right_password(strict_kg, make_user):
    kg = await strict_kg()
    user = await make_user()
    async with client_for(kg, random_ip()) as client:
        for _ in range(4):
            await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": "wrong-password-1"})
        r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
        assert r.status_code == 429, "while throttled the password is not even checked: no oracle"
        assert int(r.headers["Retry-After"]) >= 1


async def test_consecutive_failures_lock_the_user_until_an_admin_unlocks(strict_kg, make_user):
    kg = await strict_kg(throttle_ip_failures=1000, throttle_user_failures=1000, throttle_key_failures=1000, lockout_failures=4)
    user = await make_user()
    admin = await make_user(admin=True)
    created = await _key(kg, user.user_id)
    async with client_for(kg, random_ip()) as client:
        for _ in range(4):
            r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": "not-the-password"})
            assert r.status_code == 401 and r.json()["Locked"] is False, "a wrong password never learns about the lock"
        r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
        assert r.status_code == 401 and r.json()["Locked"] is True
        r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "5"))
        assert r.status_code == 401 and r.json()["Locked"] is True, "the user's keys stop too"
        lockouts = await kg.audit.query(OPERATOR, action="user.lockout", user_id=user.user_id)
        assert lockouts and "4 consecutive" in (lockouts[0].reason or "")

        signin = await client.post("/AP/AuthenticateUser", json={"UserName": admin.username, "Password": admin.password})
        token = signin.json()["SessionToken"]
        r = await client.post("/AP/UnlockUser", headers={"aptoken": token}, json={"UserId": user.user_id})
        assert r.status_code == 200 and r.json()["result"] is True
        r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
        assert r.status_code == 200, r.text
        assert await kg.audit.query(OPERATOR, action="user.unlock", user_id=user.user_id)


async def test_a_lockout_ends_by_itself_after_the_configured_time(strict_kg, make_user):
    kg = await strict_kg(throttle_ip_failures=1000, throttle_user_failures=1000, lockout_failures=2, lockout_seconds=1)
    user = await make_user()
    async with client_for(kg, random_ip()) as client:
        for _ in range(2):
            await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": "not-the-password"})
        r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
        assert r.json()["Locked"] is True
        await asyncio.sleep(1.2)
        r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
        assert r.status_code == 200, r.text


async def test_a_success_resets_the_consecutive_count(strict_kg, make_user):
    kg = await strict_kg(throttle_ip_failures=1000, throttle_user_failures=1000, lockout_failures=3)
    user = await make_user()
    async with client_for(kg, random_ip()) as client:
        for _ in range(3):
            for _ in range(2):
                await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": "not-the-password"})
            r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
            assert r.status_code == 200, "two failures then a success, three times over, never lock"


def test_lockout_threshold_cannot_exceed_nist_limit():
    import pytest

    from keygate.domain.throttle import ThrottlePolicy

    with pytest.raises(ValueError, match="between 1 and 100"):
        ThrottlePolicy(lockout_failures=101)
