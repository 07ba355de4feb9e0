"""Threat: enumeration through different error messages.

An attacker probes ``AuthenticateUser`` (and the per-request signed form of a private call, and the
password sign-in) to learn which API keys, user ids and usernames exist, or which of its guesses was
"almost right". Every such refusal must be byte-for-byte the same reply; the precise cause is kept
in the audit trail. Only a caller who proved it holds the secret (or the password) is told the real
reason (expired key, address not allowed, user locked).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from abuse_helpers import client_at
from fastapi import FastAPI
from sqlalchemy import update

from keygate.api import create_app
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.clock import utcnow
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR
from keygate.store.tables import api_keys

ATTACKER_IP = "203.0.113.7"
GENERIC_FAILURE = {"Authenticated": False, "Locked": False, "errormsg": "Invalid credentials", "errorcode": 20}
UNKNOWN_USER_ID = 987_654_321


@pytest.fixture(scope="module")
def app(kg: Keygate) -> FastAPI:
    return create_app(keygate=kg)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_at(app, ATTACKER_IP) as c:
        yield c


def signed(api_key: str, secret: str, user_id: int) -> dict[str, str]:
    nonce = str(secrets.randbelow(10**12) + 10**12)
    return {"APIKey": api_key, "Signature": compute_signature(secret, nonce, user_id, api_key), "UserId": str(user_id), "Nonce": nonce}


async def probes(make_user, make_key) -> tuple[CreatedKey, dict[str, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """Four wrong guesses against a real key of the victim, each failing for a different reason."""
    victim, other = await make_user(), await make_user()
    key = await make_key(victim.user_id, ["Trading"])
    other_key = await make_key(other.user_id, ["Trading"])
    return key, {
        "unknown api key": signed("K" * 32, key.secret, victim.user_id),
        # the attacker holds its own key and secret and names the victim's UserId
        "api key belongs to another user": signed(other_key.key.api_key, other_key.secret, victim.user_id),
        "unknown user id": signed(key.key.api_key, key.secret, UNKNOWN_USER_ID),
        "signature mismatch": signed(key.key.api_key, secrets.token_hex(16), victim.user_id),
    }


async def test_authenticate_user_refusals_are_identical(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    key, attempts = await probes(make_user, make_key)
    replies = {cause: await client.post("/AP/AuthenticateUser", headers=headers) for cause, headers in attempts.items()}
    first = next(iter(replies.values()))
    assert first.status_code == 401 and first.json() == GENERIC_FAILURE
    for cause, r in replies.items():
        assert (r.status_code, r.content) == (first.status_code, first.content), cause
        assert r.headers.get("retry-after") is None
    # The same four guesses as JSON body fields answer the same bytes too.
    for cause, headers in attempts.items():
        r = await client.post("/AP/AuthenticateUser", json=headers)
        assert (r.status_code, r.content) == (first.status_code, first.content), cause

    # The operator sees the precise cause of each, with the client address.
    events = await kg.audit.query(OPERATOR, action="auth.key", outcome="failure", limit=1000)
    mine = [e for e in events if e.client_ip == ATTACKER_IP]
    reasons = {e.reason for e in mine if e.api_key == key.key.api_key}
    assert {"signature mismatch", "api key belongs to another user"} <= reasons
    assert any(e.reason == "unknown api key" and e.api_key is None for e in mine)
    assert all(key.secret not in (e.detail or "") + (e.reason or "") for e in mine)


async def test_signed_private_call_refusals_are_identical(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    key, attempts = await probes(make_user, make_key)
    replies = [await client.get("/AP/GetUserInfo", headers=headers) for headers in attempts.values()]
    assert replies[0].status_code == 401
    assert replies[0].json() == {"result": False, "errormsg": "Invalid credentials", "errorcode": 20, "detail": None}
    assert len({(r.status_code, r.content) for r in replies}) == 1
    reasons = {e.reason for e in await kg.audit.query(OPERATOR, action="auth.signed_request", api_key=key.key.api_key, limit=100)}
    assert {"signature mismatch", "api key belongs to another user"} <= reasons


async def test_password_unknown_user_and_wrong_password_are_identical(client: httpx.AsyncClient, kg: Keygate, make_user) -> None:
    user = await make_user()
    ghost = f"ghost{secrets.token_hex(5)}"
    wrong = {"UserName": user.username, "Password": "not-" + user.password}
    unknown = {"UserName": ghost, "Password": user.password}
    a = await client.post("/AP/AuthenticateUser", json=wrong)
    b = await client.post("/AP/AuthenticateUser", json=unknown)
    assert a.status_code == 401 and a.json() == GENERIC_FAILURE
    assert (a.status_code, a.content) == (b.status_code, b.content)

    def basic(username: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}

    c = await client.post("/AP/Authenticate", headers=basic(user.username, "not-" + user.password))
    d = await client.post("/AP/Authenticate", headers=basic(ghost, user.password))
    e = await client.post("/AP/WebAuthenticateUser", json=unknown)
    assert {(r.status_code, r.content) for r in (c, d, e)} == {(a.status_code, a.content)}

    events = await kg.audit.query(OPERATOR, action="auth.password", outcome="failure", limit=1000)
    assert any(ev.reason == "wrong password" and ev.subject_user_id == user.user_id for ev in events)
    assert any(ev.reason == "unknown user" and ev.subject_user_id is None and ev.client_ip == ATTACKER_IP for ev in events)
    assert all(user.password not in (ev.reason or "") + (ev.detail or "") for ev in events)


async def test_locked_is_revealed_only_with_the_right_password(client: httpx.AsyncClient, kg: Keygate, make_user) -> None:
    user = await make_user()
    await kg.users.set_locked(OPERATOR, user.user_id, True, reason="test")
    guess = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": "not-" + user.password})
    assert guess.status_code == 401 and guess.json() == GENERIC_FAILURE
    right = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
    assert right.status_code == 401 and right.json()["Locked"] is True and "locked" in right.json()["errormsg"]


async def test_locked_key_owner_is_revealed_only_with_the_right_signature(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    key = await make_key(user.user_id)
    await kg.users.set_locked(OPERATOR, user.user_id, True, reason="test")
    guess = await client.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, secrets.token_hex(16), user.user_id))
    assert guess.status_code == 401 and guess.json() == GENERIC_FAILURE
    right = await client.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, key.secret, user.user_id))
    assert right.status_code == 401 and right.json()["Locked"] is True


async def expire(kg: Keygate, api_key: str) -> None:
    """Put the key's expiry in the past (the API refuses a past date, so write the row directly)."""
    async with kg.engine.begin() as conn:
        await conn.execute(update(api_keys).where(api_keys.c.api_key == api_key).values(expires_at=utcnow() - timedelta(minutes=1)))


@pytest.mark.parametrize("cause", ["expired", "ip refused"])
async def test_specific_message_only_with_the_right_signature(client: httpx.AsyncClient, kg: Keygate, make_user, make_key, cause: str) -> None:
    user = await make_user()
    if cause == "expired":
        key = await make_key(user.user_id)
        await expire(kg, key.key.api_key)
        message, reason = "This API key has expired; create a new one", "api key expired"
    else:
        key = await make_key(user.user_id, ips=["198.51.100.0/24", "2001:db8::/32"])
        message, reason = "This API key may not be used from your IP address", f"client ip {ATTACKER_IP} not in allowlist"
    unknown = await client.post("/AP/AuthenticateUser", headers=signed("K" * 32, key.secret, user.user_id))
    guess = await client.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, secrets.token_hex(16), user.user_id))
    assert (guess.status_code, guess.content) == (unknown.status_code, unknown.content)
    assert guess.json() == GENERIC_FAILURE

    right = await client.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, key.secret, user.user_id))
    assert right.status_code == 401
    assert right.json() == {"Authenticated": False, "Locked": False, "errormsg": message, "errorcode": 20}
    signed_call = await client.get("/AP/GetUserInfo", headers=signed(key.key.api_key, key.secret, user.user_id))
    assert signed_call.status_code == 401 and signed_call.json()["errormsg"] == message

    reasons = [e.reason for e in await kg.audit.query(OPERATOR, api_key=key.key.api_key, outcome="failure", limit=10)]
    assert reasons.count(reason) == 2 and "signature mismatch" in reasons
