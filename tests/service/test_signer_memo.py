"""The signer memo (service/auth.py ``_verify_now``): the happy path of a per-request signed call or a
key sign-in, decided without reading the key or the user again. An entry is written only after the
whole path (``_verify_key``) accepted the key, the user and the address; it lives at most
``MEMO_SECONDS``; any change this process applies voids every entry at once (its own or one read from
the change log); and anything off the happy path (another address, another spelling of a field, a
wrong signature, a replayed nonce, a locked user, a key about to expire) goes the whole way, with its
refusal and audit row as before.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from svc_helpers import CLIENT_IP, count_lookups, key_credentials

from keygate.domain.errors import AuthenticationFailed
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import Permission
from keygate.domain.replay import ReplayMode
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service import auth as auth_module
from keygate.service.auth import MEMO_SECONDS, KeyCredentials
from keygate.service.clock import utcnow
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR, Principal

_nonces = iter(range(10**12, 2 * 10**12))


def _headers(created: CreatedKey, nonce: str | None = None, *, user_id: str | None = None,
             signature: str | None = None) -> tuple[bytes, bytes, bytes, bytes]:
    """The four headers as a client sends them: APIKey, Signature, UserId, Nonce."""
    nonce = nonce or str(next(_nonces))
    key = created.key
    signature = signature or compute_signature(created.secret, nonce, key.user_id, key.api_key)
    return key.api_key.encode(), signature.encode(), (user_id or str(key.user_id)).encode(), nonce.encode()


async def _signed_in(kg: Keygate, created: CreatedKey, ip: str = CLIENT_IP) -> None:
    """One signed call the whole way: it writes the key's memo entry for ``ip``."""
    await kg.auth.principal_for_signature(key_credentials(created, str(next(_nonces))), ip)


def _accepted(kg: Keygate, created: CreatedKey) -> int:
    """Accepted requests of the key in this process's usage counts not yet written."""
    return sum(slot[0] for (api_key, _), slot in kg.keys._counts.items() if api_key == created.key.api_key)


async def _key(kg: Keygate, make_user, mode: ReplayMode | None = None, **kw):  # type: ignore[no-untyped-def]
    user = await make_user()
    return await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=mode, **kw)


async def _from_memo(kg: Keygate, headers: tuple[bytes, bytes, bytes, bytes], ip: str = CLIENT_IP) -> Principal | None:
    """The memo's answer: at once, or after a claim that waits for the store (awaited here)."""
    found = kg.auth.principal_for_signature_now(*headers, ip)
    return found if found is None or isinstance(found, Principal) else await found


def _leases_decide(kg: Keygate) -> bool:
    """Whether ``window`` claims can be decided in this process's memory (SQLite without Redis)."""
    return not kg.settings.redis_url and kg.settings.resolved_database_url.startswith("sqlite")


@pytest.mark.parametrize("mode", [ReplayMode.COMPATIBLE, ReplayMode.WINDOW])
async def test_the_next_signed_call_is_decided_from_the_memo_and_counted(kg: Keygate, make_user, mode: ReplayMode,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, mode)
    for _ in range(5 if mode is ReplayMode.WINDOW else 1):  # a window key's first claims take its lease (SQLite)
        await _signed_in(kg, created)
    calls = count_lookups(kg, monkeypatch)
    uses = _accepted(kg, created)
    found = kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP)
    if mode is ReplayMode.COMPATIBLE or _leases_decide(kg):
        for _ in range(5):  # a lease not renewed in time (a loop stalled by a loaded machine) defers a claim or two
            if isinstance(found, Principal):
                break
            assert found is not None
            await found
            await asyncio.sleep(0.3)
            uses = _accepted(kg, created)
            found = kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP)
        assert isinstance(found, Principal)  # decided at once, without waiting for anything
    else:
        assert found is not None and not isinstance(found, Principal)  # the claim waits for PostgreSQL or Redis
        found = await found
    assert found.api_key == created.key.api_key
    assert found.permissions == frozenset()
    assert calls == []  # neither the key nor the user was read again
    assert _accepted(kg, created) == uses + 1  # counted in the key's usage, as the whole way counts it


async def test_a_replayed_nonce_is_refused_and_audited_from_the_memo_or_the_whole_way(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, ReplayMode.WINDOW)
    for _ in range(5):
        await _signed_in(kg, created)
    nonce = str(next(_nonces))
    headers = _headers(created, nonce)
    assert await _from_memo(kg, headers) is not None
    before = kg.audit.pending
    with pytest.raises(AuthenticationFailed, match="already used"):
        await _from_memo(kg, headers)  # refused by the memo path's own claim, at once or after waiting
    with pytest.raises(AuthenticationFailed, match="already used"):
        await kg.auth.principal_for_signature(key_credentials(created, nonce), CLIENT_IP)
    assert kg.audit.pending >= before + 2  # each refusal audited


async def test_a_change_made_here_reaches_the_next_signed_call(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, ReplayMode.COMPATIBLE)
    await _signed_in(kg, created)
    assert kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP) is not None
    await kg.keys.update(OPERATOR, created.key.user_id, created.key.api_key, permissions=frozenset({Permission.TRADING}))
    assert kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP) is None  # voided: the whole way
    principal = await kg.auth.principal_for_signature(key_credentials(created), CLIENT_IP)
    assert principal.permissions == frozenset({Permission.TRADING})
    again = kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP)
    assert again is not None and again.permissions == frozenset({Permission.TRADING})


async def test_a_change_read_from_the_log_voids_every_entry(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, ReplayMode.COMPATIBLE)
    await _signed_in(kg, created)
    kg.coherence.apply("user", "0")  # what the listener does for a change of another record, from another process
    assert kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP) is None


async def test_an_entry_lives_at_most_the_memo_s_life(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, ReplayMode.COMPATIBLE)
    await _signed_in(kg, created)
    await asyncio.sleep(MEMO_SECONDS + 0.05)
    assert kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP) is None


async def test_a_decision_that_overlapped_a_change_is_not_remembered(kg: Keygate, make_user,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, ReplayMode.COMPATIBLE)
    original = kg.keys.lookup

    async def changing(api_key: str):  # type: ignore[no-untyped-def]
        found = await original(api_key)
        kg.coherence.apply("key", api_key)  # a change arrives while this decision reads the key
        return found

    monkeypatch.setattr(kg.keys, "lookup", changing)
    await _signed_in(kg, created)
    monkeypatch.setattr(kg.keys, "lookup", original)
    assert kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP) is None


async def test_anything_off_the_happy_path_goes_the_whole_way(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, ReplayMode.COMPATIBLE)
    await _signed_in(kg, created)
    now = kg.auth.principal_for_signature_now
    assert now(*_headers(created), "127.0.0.99") is None  # another address
    assert now(*_headers(created, user_id=f"0{created.key.user_id}"), CLIENT_IP) is None  # another spelling of UserId
    assert now(*_headers(created, signature="0" * 64), CLIENT_IP) is None  # a wrong signature
    assert now(*_headers(created, nonce=" 5"), CLIENT_IP) is None  # a nonce the whole way would strip
    assert now(*_headers(created, nonce="x" * 129), CLIENT_IP) is None  # too long: the whole way answers 400
    assert now(None, b"", b"", b"", CLIENT_IP) is None
    assert now(*_headers(created), CLIENT_IP) is not None  # and the happy path still is
    # The whole way still refuses the wrong signature, and audits it.
    key = created.key
    with pytest.raises(AuthenticationFailed) as refused:
        await kg.auth.principal_for_signature(KeyCredentials(key.api_key, "0" * 64, key.user_id, "7"), CLIENT_IP)
    assert refused.value.reason == "signature mismatch"


async def test_a_locked_user_or_a_key_about_to_expire_is_never_remembered(kg: Keygate, make_user,  # type: ignore[no-untyped-def]
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A memo life of 5 s instead of 0.5: a key expiring within it, 3 s from now, leaves a loaded
    # machine time to make the user (Argon2) and sign in before the key has expired.
    monkeypatch.setattr(auth_module, "MEMO_SECONDS", 5.0)
    monkeypatch.setattr(auth_module, "MEMO_TIMEDELTA", timedelta(seconds=5))
    user = await make_user()
    expiring = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE,
                                    expires_at=utcnow() + timedelta(seconds=3))
    await _signed_in(kg, expiring)
    assert kg.auth.principal_for_signature_now(*_headers(expiring), CLIENT_IP) is None
    created = await _key(kg, make_user, ReplayMode.COMPATIBLE)
    await kg.users.set_locked(OPERATOR, created.key.user_id, True)
    with pytest.raises(AuthenticationFailed):
        await _signed_in(kg, created)
    assert kg.auth.principal_for_signature_now(*_headers(created), CLIENT_IP) is None


async def test_a_key_sign_in_from_the_memo_issues_a_session(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    created = await _key(kg, make_user, ReplayMode.COMPATIBLE)
    await _signed_in(kg, created)
    grant = await kg.auth.authenticate_key_now(*_headers(created), CLIENT_IP)
    assert grant is not None
    principal = await kg.auth.principal_for_token(grant.token, CLIENT_IP)
    assert principal.api_key == created.key.api_key
