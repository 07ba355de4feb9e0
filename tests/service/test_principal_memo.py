"""The principal memo (service/auth.py ``principal_for_token``): a token's decision is remembered for
at most ``MEMO_SECONDS``, and any change this process applies voids it at once, whether the change was
made here or read from the change log (``Coherence.apply``, which the listener calls). A decision whose
reads overlapped a change is not remembered.
"""

from __future__ import annotations

import pytest
from svc_helpers import CLIENT_IP, count_lookups, key_credentials

from keygate.domain.errors import NotAuthorized
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import Permission
from keygate.service import Keygate
from keygate.service.auth import MEMO_SECONDS
from keygate.service.principal import OPERATOR


async def _key_session(kg: Keygate, make_user):  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist())
    grant = await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)
    return user, created, grant.token


async def test_a_change_made_here_reaches_the_next_call(kg: Keygate, make_user, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    user, created, token = await _key_session(kg, make_user)
    calls = count_lookups(kg, monkeypatch)
    first = await kg.auth.principal_for_token(token, CLIENT_IP)
    again = await kg.auth.principal_for_token(token, CLIENT_IP)
    assert first.permissions == again.permissions == frozenset()
    assert len(calls) == 1  # the second call was answered from the memo
    await kg.keys.update(OPERATOR, user.user_id, created.key.api_key, permissions=frozenset({Permission.TRADING}))
    now = await kg.auth.principal_for_token(token, CLIENT_IP)
    assert now.permissions == frozenset({Permission.TRADING})
    assert len(calls) == 2


async def test_a_change_read_from_the_log_voids_every_memo(kg: Keygate, make_user, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, created, token = await _key_session(kg, make_user)
    calls = count_lookups(kg, monkeypatch)
    await kg.auth.principal_for_token(token, CLIENT_IP)
    kg.coherence.apply("user", "0")  # what the listener does for a change of another record, from another process
    await kg.auth.principal_for_token(token, CLIENT_IP)
    assert len(calls) == 2


async def test_a_decision_that_overlapped_a_change_is_not_remembered(kg: Keygate, make_user, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, created, token = await _key_session(kg, make_user)
    calls: list[str] = []
    original = kg.keys.lookup

    async def changing(api_key: str):  # type: ignore[no-untyped-def]
        calls.append(api_key)
        found = await original(api_key)
        if len(calls) == 1:
            kg.coherence.apply("key", api_key)  # a change arrives while this decision reads the key
        return found

    monkeypatch.setattr(kg.keys, "lookup", changing)
    await kg.auth.principal_for_token(token, CLIENT_IP)
    await kg.auth.principal_for_token(token, CLIENT_IP)
    assert len(calls) == 2


async def test_another_address_or_an_ended_session_is_never_answered_from_the_memo(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    _, created, token = await _key_session(kg, make_user)
    principal = await kg.auth.principal_for_token(token, CLIENT_IP)
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, "127.0.0.99")
    await kg.auth.logout(principal, CLIENT_IP)
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, CLIENT_IP)


def test_the_memo_is_short() -> None:
    assert MEMO_SECONDS <= 0.5
