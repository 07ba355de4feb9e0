"""Threat: session fixation and reuse.

An attacker who obtains a session token (from a log, a proxy, a shoulder, a stolen pending 2FA
token) tries to use it after the owner logged out, from another address, through a query string
or body where it may be logged, or after the key it came from was deleted or restricted. Every such
use is refused at once, and the database never holds a usable token.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator

import httpx
import pyotp
import pytest
from abuse_helpers import client_at, key_token, password_token
from abuse_helpers import fresh_signed as signed
from fastapi import FastAPI
from sqlalchemy import select

from keygate.api import create_app
from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from keygate.store.tables import audit_events, sessions

OWNER_IP = "203.0.113.7"
THIEF_IP = "198.51.100.66"
NOT_AUTHORIZED = 401


@pytest.fixture(scope="module")
def app(kg: Keygate) -> FastAPI:
    return create_app(keygate=kg)


@pytest.fixture
async def owner(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_at(app, OWNER_IP) as c:
        yield c


async def works(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    r = await client.get("/AP/GetUserInfo", headers=headers)
    if r.status_code == 200:
        return True
    assert r.status_code == NOT_AUTHORIZED, r.text
    body = r.json()
    assert body["result"] is False and body["errorcode"] == 20 and "Not Authorized" in body["errormsg"]
    return False


@pytest.mark.parametrize("kind", ["password", "key"])
async def test_token_refused_after_logout(owner: httpx.AsyncClient, make_user, make_key, kind: str) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    other = await key_token(owner, created)
    for logout_header in ("aptoken", "APToken"):
        token = await (password_token(owner, user.username, user.password) if kind == "password" else key_token(owner, created))
        assert await works(owner, {"aptoken": token}) and await works(owner, {"APToken": token})
        r = await owner.post("/AP/LogOut", headers={logout_header: token})
        assert r.status_code == 200 and r.json()["result"] is True
        assert not await works(owner, {"aptoken": token})
        assert not await works(owner, {"APToken": token})
        assert (await owner.post("/AP/LogOut", headers={"aptoken": token})).status_code == NOT_AUTHORIZED
        resumed = await owner.post("/AP/WebAuthenticateUser", json={"SessionToken": token})
        assert resumed.status_code == NOT_AUTHORIZED and resumed.json()["Authenticated"] is False
    assert await works(owner, {"aptoken": other}), "logging out one session leaves the user's other sessions alone"


async def enrol_totp(kg: Keygate, user_id: int) -> pyotp.TOTP:
    secret, _ = await kg.users.begin_totp(OPERATOR, user_id)
    totp = pyotp.TOTP(secret)
    await kg.users.confirm_totp(OPERATOR, user_id, totp.now())
    return totp


async def test_pending_2fa_token_is_not_a_session_and_is_good_once(owner: httpx.AsyncClient, kg: Keygate, make_user) -> None:
    user = await make_user()
    totp = await enrol_totp(kg, user.user_id)
    r = await owner.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
    assert r.status_code == 200 and r.json()["Requires2FA"] is True and "SessionToken" not in r.json()
    pending = r.json()["Pending2FaToken"]

    assert not await works(owner, {"aptoken": pending})
    assert (await owner.post("/AP/WebAuthenticateUser", json={"SessionToken": pending})).status_code == NOT_AUTHORIZED
    assert (await owner.post("/AP/AddUserAPIKey", headers={"aptoken": pending})).status_code == NOT_AUTHORIZED

    code = totp.at(time.time() + 30)  # next step: inside the window, and not the code used to enrol
    done = await owner.post("/AP/Authenticate2FA", headers={"Pending2FaToken": pending}, json={"Code": code})
    assert done.status_code == 200 and done.json()["Authenticated"] is True
    session = done.json()["SessionToken"]
    assert session != pending and await works(owner, {"aptoken": session})

    for again in (totp.now(), totp.at(time.time() - 30), code):
        r = await owner.post("/AP/Authenticate2FA", headers={"Pending2FaToken": pending}, json={"Code": again})
        assert r.status_code == NOT_AUTHORIZED
        assert r.json() == {"Authenticated": False, "Locked": False, "errormsg": "Invalid credentials", "errorcode": 20}
    assert not await works(owner, {"aptoken": pending})


async def test_session_token_from_another_ip_is_refused(app: FastAPI, owner: httpx.AsyncClient, make_user, make_key) -> None:
    user = await make_user()
    tokens = [await password_token(owner, user.username, user.password), await key_token(owner, await make_key(user.user_id))]
    async with client_at(app, THIEF_IP) as thief:
        for token in tokens:
            assert not await works(thief, {"aptoken": token})
            r = await thief.post("/AP/LogOut", headers={"aptoken": token})
            assert r.status_code == NOT_AUTHORIZED
    for token in tokens:  # the thief's attempts neither used nor ended the owner's session
        assert await works(owner, {"aptoken": token})


async def test_unbound_sessions_follow_the_operator_setting(settings: Settings, make_user) -> None:
    kg2 = Keygate(settings.model_copy(update=dict(bind_session_ip=False)))
    await kg2.start(bootstrap_admin=False)
    try:
        app2 = create_app(keygate=kg2)
        user = await make_user()
        owner_key = await kg2.keys.create(OPERATOR, user.user_id,
                                          parse_permissions([]), IpAllowlist.parse([OWNER_IP]))
        async with client_at(app2, OWNER_IP) as owner, client_at(app2, THIEF_IP) as elsewhere:
            token = await password_token(owner, user.username, user.password)
            assert await works(elsewhere, {"aptoken": token})
            # Unbinding sessions never lifts a key's allowlist: its session stays on the allowed address.
            key_session = await key_token(owner, owner_key)
            assert await works(owner, {"aptoken": key_session})
            assert not await works(elsewhere, {"aptoken": key_session})
    finally:
        await kg2.close()


async def test_token_only_accepted_in_a_header(owner: httpx.AsyncClient, make_user) -> None:
    user = await make_user()
    token = await password_token(owner, user.username, user.password)
    attempts = {
        "query": owner.get(f"/AP/GetUserInfo?aptoken={token}&APToken={token}"),
        "json body": owner.post("/AP/GetUserInfo", json={"aptoken": token, "APToken": token}),
        "session token field": owner.post("/AP/GetUserInfo", json={"SessionToken": token}),
        "cookie": owner.get("/AP/GetUserInfo", headers={"Cookie": f"aptoken={token}"}),
        "bearer": owner.get("/AP/GetUserInfo", headers={"Authorization": f"Bearer {token}"}),
    }
    for where, request in attempts.items():
        r = await request
        assert r.status_code == NOT_AUTHORIZED and r.json()["errorcode"] == 20, where
        assert token not in r.text
    assert await works(owner, {"aptoken": token})


async def _owner(kg: Keygate, user_id: int):  # type: ignore[no-untyped-def]
    return OPERATOR


@pytest.mark.parametrize("change", ["delete", "allowlist", "rotate"])
async def test_key_change_ends_its_sessions_at_once(owner: httpx.AsyncClient, kg: Keygate, make_user, make_key, change: str) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], [OWNER_IP, "2001:db8::/64"])
    spare = await make_key(user.user_id, ["Trading"])
    token, spare_token = await key_token(owner, created), await key_token(owner, spare)
    assert await works(owner, {"aptoken": token})  # cached in-process now: the change must still bite at once
    actor, api_key = await _owner(kg, user.user_id), created.key.api_key
    if change == "delete":
        await kg.keys.delete(actor, user.user_id, api_key)
    elif change == "allowlist":
        await kg.keys.update(actor, user.user_id, api_key, ip_allowlist=IpAllowlist.parse(["2001:db8::/64"]))
    else:
        await kg.keys.rotate_secret(actor, user.user_id, api_key)
    assert not await works(owner, {"aptoken": token})
    assert await works(owner, {"aptoken": spare_token}), "another key's session is untouched"
    if change == "delete":
        r = await owner.post("/AP/AuthenticateUser", headers=signed(created))
        assert r.status_code == NOT_AUTHORIZED


async def test_label_change_keeps_sessions(owner: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    token = await key_token(owner, created)
    await kg.keys.update(await _owner(kg, user.user_id), user.user_id, created.key.api_key, label="renamed")
    assert await works(owner, {"aptoken": token})


async def test_permission_change_reaches_the_live_session(owner: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading", "Withdraw"])
    token = await key_token(owner, created)
    await kg.keys.update(await _owner(kg, user.user_id), user.user_id, created.key.api_key, permissions=parse_permissions(["Trading"]))
    r = await owner.get("/AP/GetUserPermissions", headers={"aptoken": token})
    assert r.status_code == 200 and r.json() == ["Trading"], "a key session has the key's rights as they are now"


async def test_tokens_are_stored_only_as_hashes(owner: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    tokens = [await password_token(owner, user.username, user.password), await key_token(owner, await make_key(user.user_id))]
    for token in tokens:
        assert await works(owner, {"aptoken": token})
    await kg.flush()
    async with kg.engine.connect() as conn:
        rows = (await conn.execute(select(sessions).where(sessions.c.user_id == user.user_id))).mappings().all()
        audit = (await conn.execute(select(audit_events))).mappings().all()
    assert len(rows) == 2
    # The issue-time prefix, then the SHA-256 of the whole token (see domain/sessions.py).
    hashes = {t[:8] + hashlib.sha256(t.encode()).hexdigest()[:56] for t in tokens}
    assert {r["token_hash"] for r in rows} == hashes
    for row in rows:
        assert re.fullmatch(r"[0-9a-f]{64}", row["token_hash"])
        stored = " ".join(str(v) for v in row.values())
        secret_parts = [t[9:] for t in tokens] + [t[9:].replace("-", "") for t in tokens]
        assert not any(part in stored for part in secret_parts), "the random part of a token was stored"
    logged = " ".join(str(v) for r in audit for v in r.values())
    assert not any(t in logged for t in tokens), "a full token reached the audit trail"
