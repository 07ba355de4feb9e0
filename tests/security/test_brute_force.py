"""Threat: guessing secrets and passwords, and turning the defences against their owners.

Wrong signatures count per source address only (a 256-bit secret cannot be guessed online), never
against the user or the key. Password failures count per source address and per username, and block
untrusted sources only: an address the user signed in from before (or a device token) keeps working.
"""

from __future__ import annotations

import asyncio

import pytest
from abuse_helpers import client_for, random_ip, signed

from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.service.principal import OPERATOR

pytestmark = pytest.mark.serial  # a loaded machine can delay the change log past its bound (503): run alone

BAD_SIGNATURE = "0" * 64


async def _key(kg, user_id: int, mode: ReplayMode = ReplayMode.COMPATIBLE):  # type: ignore[no-untyped-def]
    await kg.users.require(user_id)
    return await kg.keys.create(OPERATOR, user_id, frozenset(), IpAllowlist(), replay_mode=mode)


def _pw(user, password=None):  # type: ignore[no-untyped-def]
    return {"UserName": user.username, "Password": password or user.password}


async def test_wrong_signatures_past_the_threshold_get_429_from_that_address_only(strict_kg, make_user):
    kg = await strict_kg()
    user = await make_user()
    created = await _key(kg, user.user_id)
    bad = {**signed(created, user.user_id, "1"), "Signature": BAD_SIGNATURE}
    async with client_for(kg, random_ip()) as client:
        statuses = [(await client.post("/AP/AuthenticateUser", headers=bad)).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        for _ in range(3):
            r = await client.post("/AP/AuthenticateUser", headers=bad)
            assert r.status_code == 429
            assert r.json()["Authenticated"] is False and r.json()["errormsg"]
            assert int(r.headers["Retry-After"]) >= 1
    async with client_for(kg, random_ip()) as other:
        assert (await other.post("/AP/AuthenticateUser", headers=bad)).status_code == 401, "another address is not punished"
        good = await other.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "2"))
        assert good.status_code == 200 and good.json()["Locked"] is False, "the key and its user are not punished either"


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


async def test_wrong_signatures_never_lock_the_user_or_the_key(strict_kg, make_user):
    kg = await strict_kg(lockout_failures=2)
    user = await make_user()
    created = await _key(kg, user.user_id)
    bad = {**signed(created, user.user_id, "1"), "Signature": BAD_SIGNATURE}
    for _ in range(6):
        async with client_for(kg, random_ip()) as attacker:
            for _ in range(3):
                await attacker.post("/AP/AuthenticateUser", headers=bad)
    assert not (await kg.users.require(user.user_id)).locked
    async with client_for(kg, random_ip()) as victim:
        r = await victim.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "2"))
        assert r.status_code == 200 and r.json()["Locked"] is False, r.text
        assert (await victim.post("/AP/AuthenticateUser", json=_pw(user))).status_code == 200


async def test_nonce_refusals_are_not_counted_as_guesses(strict_kg, make_user):
    kg = await strict_kg()
    user = await make_user()
    created = await _key(kg, user.user_id, ReplayMode.INCREASING)
    async with client_for(kg, random_ip()) as client:
        assert (await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "1000"))).status_code == 200
        for _ in range(8):  # the right secret, a stale nonce: told why, never throttled
            r = await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "5"))
            assert r.status_code == 401 and "Nonce must be greater" in r.json()["errormsg"]
        assert (await client.post("/AP/AuthenticateUser", json=_pw(user))).status_code == 200


async def test_a_throttled_password_guesser_is_refused_even_with_the_right_password(strict_kg, make_user):
    kg = await strict_kg()
    user = await make_user()
    async with client_for(kg, random_ip()) as client:
        for _ in range(4):
            await client.post("/AP/AuthenticateUser", json=_pw(user, "wrong-password-1"))
        r = await client.post("/AP/AuthenticateUser", json=_pw(user))
        assert r.status_code == 429, "while throttled the password is not even checked: no oracle"
        assert int(r.headers["Retry-After"]) >= 1


async def test_lockout_refuses_untrusted_sources_while_the_owner_signs_in_from_a_known_address(strict_kg, make_user):
    kg = await strict_kg(throttle_ip_failures=1000, throttle_user_failures=1000, lockout_failures=4)
    user = await make_user()
    admin = await make_user(admin=True)
    created = await _key(kg, user.user_id)
    home = random_ip()
    async with client_for(kg, home) as owner:
        assert (await owner.post("/AP/AuthenticateUser", json=_pw(user))).status_code == 200  # home becomes known
    for _ in range(4):
        async with client_for(kg, random_ip()) as attacker:
            r = await attacker.post("/AP/AuthenticateUser", json=_pw(user, "not-the-password"))
            assert r.status_code in (401, 429) and r.json()["Locked"] is False, "a wrong password never learns about the lock"
    async with client_for(kg, random_ip()) as stranger:
        r = await stranger.post("/AP/AuthenticateUser", json=_pw(user))
        assert r.status_code == 429, "from an untrusted address even the right password waits out the lockout"
    lockouts = await kg.audit.query(OPERATOR, action="user.lockout", user_id=user.user_id)
    assert lockouts and "4 failed" in (lockouts[0].reason or "")
    async with client_for(kg, home) as owner:
        assert (await owner.post("/AP/AuthenticateUser", json=_pw(user))).status_code == 200, "the owner's known address works"
        r = await owner.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "5"))
        assert r.status_code == 200 and r.json()["Locked"] is False, "and so do the user's keys"
        signin = await owner.post("/AP/AuthenticateUser", json=_pw(admin))
        token = signin.json()["SessionToken"]
        r = await owner.post("/AP/UnlockUser", headers={"aptoken": token}, json={"UserId": user.user_id})
        assert r.status_code == 200 and r.json()["result"] is True
    async with client_for(kg, random_ip()) as stranger:
        r = await stranger.post("/AP/AuthenticateUser", json=_pw(user))
        assert r.status_code == 200, "an administrator's unlock ends the lockout"


async def test_a_lockout_ends_by_itself_after_the_configured_time(strict_kg, make_user):
    kg = await strict_kg(throttle_ip_failures=1000, throttle_user_failures=1000, lockout_failures=2, lockout_seconds=1)
    user = await make_user()
    async with client_for(kg, random_ip()) as client:
        for _ in range(2):
            await client.post("/AP/AuthenticateUser", json=_pw(user, "not-the-password"))
        r = await client.post("/AP/AuthenticateUser", json=_pw(user))
        assert r.status_code == 429
        await asyncio.sleep(1.2)
        r = await client.post("/AP/AuthenticateUser", json=_pw(user))
        assert r.status_code == 200, r.text


async def test_after_a_lockout_ends_one_failure_does_not_lock_again(strict_kg, make_user):
    kg = await strict_kg(throttle_ip_failures=1000, throttle_user_failures=1000, lockout_failures=3, lockout_seconds=1)
    user = await make_user()
    async with client_for(kg, random_ip()) as client:
        for _ in range(3):
            await client.post("/AP/AuthenticateUser", json=_pw(user, "not-the-password"))
        await asyncio.sleep(1.2)
        r = await client.post("/AP/AuthenticateUser", json=_pw(user, "not-the-password"))
        assert r.status_code == 401
        assert (await client.post("/AP/AuthenticateUser", json=_pw(user))).status_code == 200


async def test_a_success_resets_the_consecutive_count(strict_kg, make_user):
    kg = await strict_kg(throttle_ip_failures=1000, throttle_user_failures=1000, lockout_failures=3)
    user = await make_user()
    async with client_for(kg, random_ip()) as client:
        for _ in range(3):
            for _ in range(2):
                await client.post("/AP/AuthenticateUser", json=_pw(user, "not-the-password"))
            r = await client.post("/AP/AuthenticateUser", json=_pw(user))
            assert r.status_code == 200, "two failures then a success, three times over, never lock"


def test_lockout_threshold_cannot_exceed_nist_limit():
    import pytest

    from keygate.domain.throttle import ThrottlePolicy

    with pytest.raises(ValueError, match="between 1 and 100"):
        ThrottlePolicy(lockout_failures=101)


def test_the_pci_profile_locks_after_at_most_10_failures_for_at_least_30_minutes():
    import pytest

    from keygate.domain.throttle import ThrottlePolicy

    nist = ThrottlePolicy.for_profile("nist")
    assert (nist.lockout_failures, nist.lockout_seconds) == (50, 3600)
    pci = ThrottlePolicy.for_profile("pci-dss-4.0.1")
    assert pci.lockout_failures <= 10 and pci.lockout_seconds == 3600
    short = ThrottlePolicy.for_profile("pci-dss-4.0.1", lockout_failures=40, lockout_seconds=60)
    assert (short.lockout_failures, short.lockout_seconds) == (10, 1800)
    assert ThrottlePolicy.for_profile("pci-dss-4.0.1", lockout_seconds=0).lockout_seconds == 0  # until an admin unlocks
    with pytest.raises(ValueError, match="profile"):
        ThrottlePolicy.for_profile("lax")
