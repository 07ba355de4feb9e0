"""A key's usage: requests and refusals per hour, its last use (time and address), who may read them,
and the bounds (in-memory map, 8 days of rows, rows of a deleted key)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from svc_helpers import CLIENT_IP, count_rows, key_credentials

from keygate.domain.errors import AuthenticationFailed, InvalidRequest, NotAuthorized, NotFound
from keygate.domain.iprules import IpAllowlist
from keygate.domain.usage import hour_of
from keygate.service import Keygate
from keygate.service import keys as keys_module
from keygate.service.clock import utcnow
from keygate.service.principal import OPERATOR


async def _calls(kg: Keygate, created, ok: int, refused: int, ip: str = CLIENT_IP) -> None:  # type: ignore[no-untyped-def]
    for _ in range(ok):
        await kg.auth.principal_for_signature(key_credentials(created), ip)
    for _ in range(refused):
        with pytest.raises(AuthenticationFailed):
            await kg.auth.principal_for_signature(key_credentials(created, secret="0" * 64), ip)


async def test_signed_calls_sign_ins_and_session_calls_count_refusals_too(kg: Keygate, make_user, make_key, password_principal) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    await _calls(kg, created, ok=3, refused=2, ip="2001:DB8:0:0::7")
    token = (await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)).token  # a key sign-in
    await kg.auth.principal_for_token(token, CLIENT_IP)  # a key-session call
    await kg.keys.flush()

    me = await password_principal(user.username, user.password)
    usage = await kg.keys.usage(me, created.key.api_key)
    assert len(usage.hours) == 168 and usage.hours[-1].hour == hour_of(utcnow())
    assert (usage.hours[-1].requests, usage.hours[-1].refusals) == (5, 2)
    assert usage.requests == 5 and usage.refusals == 2
    assert all(h.requests == h.refusals == 0 for h in usage.hours[:-1])
    assert usage.last_used_ip == CLIENT_IP and usage.last_used_at is not None
    assert (utcnow() - usage.last_used_at) < timedelta(seconds=30)
    reply = usage.as_dict()
    assert reply["LastUsedIp"] == CLIENT_IP and reply["Hours"][-1] == {  # type: ignore[index]
        "Hour": hour_of(utcnow()).isoformat(), "Requests": 5, "Refusals": 2}
    assert len(usage.last(24)) == 24


async def test_the_last_address_is_canonical_and_counts_add_up_across_flushes(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    await _calls(kg, created, ok=1, refused=0, ip="2001:DB8:0:0::7")
    await kg.keys.flush()
    usage = await kg.keys.usage(OPERATOR, created.key.api_key)
    assert usage.last_used_ip == "2001:db8::7"
    await _calls(kg, created, ok=2, refused=1)
    await kg.keys.flush()  # a second flush (or another process) adds to the same hour
    usage = await kg.keys.usage(OPERATOR, created.key.api_key)
    assert (usage.hours[-1].requests, usage.hours[-1].refusals) == (3, 1)
    assert usage.last_used_ip == CLIENT_IP


async def test_replayed_nonce_address_refusal_and_refused_key_session_count_as_refusals(kg: Keygate, make_user) -> None:
    user = await make_user()
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist.parse(["127.0.0.1"]),
                                   replay_mode=keys_module.ReplayMode.INCREASING)
    await kg.auth.principal_for_signature(key_credentials(created, nonce="1000"), CLIENT_IP)
    with pytest.raises(AuthenticationFailed):  # the same nonce again: a replay
        await kg.auth.principal_for_signature(key_credentials(created, nonce="1000"), CLIENT_IP)
    with pytest.raises(AuthenticationFailed):  # an address the allowlist refuses
        await kg.auth.principal_for_signature(key_credentials(created, nonce="1001"), "10.1.2.3")
    token = (await kg.auth.authenticate_key(key_credentials(created, nonce="1002"), CLIENT_IP)).token
    await kg.keys.update(OPERATOR, user.user_id, created.key.api_key, ip_allowlist=IpAllowlist.parse(["10.9.9.9"]))
    with pytest.raises(NotAuthorized):  # its session, from an address the key no longer allows
        await kg.auth.principal_for_token(token, CLIENT_IP)
    await kg.keys.flush()
    usage = await kg.keys.usage(OPERATOR, created.key.api_key)
    assert (usage.requests, usage.refusals) == (2, 3)


async def test_an_unknown_key_counts_nothing(kg: Keygate, make_user) -> None:
    user = await make_user()
    await kg.keys.flush()
    before = await count_rows(kg, "key_usage")
    creds = key_credentials(await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist()))
    with pytest.raises(AuthenticationFailed):
        await kg.auth.principal_for_signature(creds._replace(api_key="f" * 32), CLIENT_IP)
    await kg.keys.flush()
    assert await count_rows(kg, "key_usage", "api_key = :k", k="f" * 32) == 0
    assert await count_rows(kg, "key_usage") == before


async def test_who_may_read_a_keys_usage(kg: Keygate, make_user, make_key, password_principal) -> None:
    owner, other, admin = await make_user(), await make_user(), await make_user(admin=True)
    first = await make_key(owner.user_id)
    second = await make_key(owner.user_id)
    me = await password_principal(owner.username, owner.password)
    stranger = await password_principal(other.username, other.password)
    boss = await password_principal(admin.username, admin.password)
    first_key = await kg.auth.principal_for_signature(key_credentials(first), CLIENT_IP)
    token = (await kg.auth.authenticate_key(key_credentials(first), CLIENT_IP)).token
    first_session = await kg.auth.principal_for_token(token, CLIENT_IP)

    assert (await kg.keys.usage(me, second.key.api_key)).api_key == second.key.api_key  # the owner: every own key
    assert (await kg.keys.usage(boss, first.key.api_key)).user_id == owner.user_id  # an administrator: any key
    for principal in (first_key, first_session):  # a key: only its own
        assert (await kg.keys.usage(principal, first.key.api_key)).api_key == first.key.api_key
        with pytest.raises(NotFound):
            await kg.keys.usage(principal, second.key.api_key)
    with pytest.raises(NotFound) as theirs:  # another user's key: as if it did not exist
        await kg.keys.usage(stranger, first.key.api_key)
    with pytest.raises(NotFound) as missing:
        await kg.keys.usage(stranger, "0" * 32)
    assert theirs.value.message == missing.value.message
    with pytest.raises(NotFound):  # a UserId that does not own the key
        await kg.keys.usage(boss, first.key.api_key, user_id=other.user_id)
    assert (await kg.keys.usage(boss, first.key.api_key, user_id=owner.user_id)).api_key == first.key.api_key
    for bad in (0, 169, "24", True):
        with pytest.raises(InvalidRequest):
            await kg.keys.usage(me, first.key.api_key, hours=bad)  # type: ignore[arg-type]
    assert len((await kg.keys.usage(me, first.key.api_key, hours=24)).hours) == 24


async def test_deleting_a_key_deletes_its_usage_and_late_counts_leave_no_rows(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    await _calls(kg, created, ok=2, refused=1)
    await kg.keys.flush()
    assert await count_rows(kg, "key_usage", "api_key = :k", k=created.key.api_key) == 1
    await _calls(kg, created, ok=1, refused=0)  # counted, not yet written, when the key goes
    await kg.keys.delete(OPERATOR, user.user_id, created.key.api_key)
    await kg.keys.flush()
    assert await count_rows(kg, "key_usage", "api_key = :k", k=created.key.api_key) == 0


async def test_the_purge_drops_hours_older_than_eight_days(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    now = hour_of(utcnow())
    repo = kg.keys._repo
    await repo.add_usage({(created.key.api_key, now - timedelta(days=8, hours=1)): (5, 1),
                          (created.key.api_key, now - timedelta(days=7, hours=23)): (4, 0),
                          (created.key.api_key, now - timedelta(hours=3)): (2, 2)})
    usage = await kg.keys.usage(OPERATOR, created.key.api_key)
    assert usage.hours[-4].requests == 2 and usage.requests == 2  # older hours are outside the 7 days shown
    await kg.keys.purge_usage()
    assert await count_rows(kg, "key_usage", "api_key = :k", k=created.key.api_key) == 2  # 8 days and newer are kept


async def test_the_in_memory_counts_are_bounded_and_emptied_by_the_flush(kg: Keygate, make_user, make_key,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    await kg.keys.flush()
    monkeypatch.setattr(keys_module, "MAX_PENDING_USAGE", 3)
    for n in range(5):
        kg.keys.note_refusal(f"{n:032x}")
    kg.keys.note_refusal(f"{0:032x}")  # a pair already held keeps counting
    assert len(kg.keys._counts) == 3 and kg.keys.usage_dropped >= 2
    assert kg.keys._counts[(f"{0:032x}", next(iter(kg.keys._counts))[1])] == [0, 2]
    await kg.keys.flush()
    assert kg.keys._counts == {}
    kg.keys.mark_used(created.key.api_key, CLIENT_IP)
    await kg.keys.flush()
    assert (await kg.keys.usage(OPERATOR, created.key.api_key)).requests == 1


async def test_counts_survive_a_failed_flush(kg: Keygate, make_user, make_key, monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    await _calls(kg, created, ok=2, refused=1)

    async def outage(counts: object) -> None:
        raise OSError("database unreachable")

    with monkeypatch.context() as patch:
        patch.setattr(kg.keys._repo, "record_use", outage)
        with pytest.raises(OSError):
            await kg.keys.flush()
    await kg.keys.flush()  # the next tick writes what the failed one could not
    usage = await kg.keys.usage(OPERATOR, created.key.api_key)
    assert (usage.requests, usage.refusals) == (2, 1)
    assert usage.last_used_ip == CLIENT_IP and usage.last_used_at is not None


async def test_an_address_that_does_not_fit_is_not_kept(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    kg.keys.mark_used(created.key.api_key, "fe80::1%" + "x" * 80)
    await kg.keys.flush()
    usage = await kg.keys.usage(OPERATOR, created.key.api_key)
    assert usage.last_used_ip is None and usage.requests == 1
