"""Threat: permission escalation through an API key.

An attacker who steals an API key and secret (the usual leak: a bot's config file) tries to turn it
into more: mint itself new keys, give its key ``Withdraw`` or a wider allowlist, rotate the secret to
lock the owner out, delete keys, enrol its own TOTP, or, with an administrator's key, use admin
endpoints. A key session and a per-request signed call get errorcode 20 and change nothing; a key
session has exactly its key's permissions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from abuse_helpers import client_at, key_token
from abuse_helpers import fresh_signed as signed
from fastapi import FastAPI
from sqlalchemy import select

from keygate.api import create_app
from keygate.domain.permissions import format_permissions
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR
from keygate.store.tables import api_keys, sessions, users

ATTACKER_IP = "203.0.113.7"
ALL = ["Trading", "Withdraw", "Deposit"]


@pytest.fixture(scope="module")
def app(kg: Keygate) -> FastAPI:
    return create_app(keygate=kg)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_at(app, ATTACKER_IP) as c:
        yield c


async def state_of(kg: Keygate, *user_ids: int) -> dict[str, Any]:
    """What an escalation would change: the users' rows, their keys (but the last-use time and the highest
    nonce, which every accepted signature records), their sessions."""
    await kg.flush()
    async with kg.engine.connect() as conn:
        u = (await conn.execute(select(users).where(users.c.user_id.in_(user_ids)).order_by(users.c.user_id))).all()
        k = (await conn.execute(select(*(c for c in api_keys.c if c.name not in ("last_used_at", "last_nonce")))
                                .where(api_keys.c.user_id.in_(user_ids)).order_by(api_keys.c.api_key))).all()
        s = (await conn.execute(select(sessions.c.token_hash, sessions.c.kind, sessions.c.permissions, sessions.c.api_key)
                                .where(sessions.c.user_id.in_(user_ids)).order_by(sessions.c.token_hash))).all()
    return {"users": [tuple(r) for r in u], "keys": [tuple(r) for r in k], "sessions": [tuple(r) for r in s]}


def attempts(created: CreatedKey, victim_id: int) -> dict[str, dict[str, Any]]:
    own, uid = created.key.api_key, created.key.user_id
    return {
        "AddUserAPIKey": {"UserId": uid, "Permissions": ALL, "Label": "backdoor"},
        "UpdateUserAPIKey": {"UserId": uid, "APIKey": own, "Permissions": ALL, "IpAllowlist": [], "Label": "mine now"},
        "RotateUserAPIKey": {"UserId": uid, "APIKey": own},
        "RemoveUserAPIKey": {"UserId": uid, "APIKey": own},
        "EnableGoogle2FA": {},
        "ConfirmGoogle2FA": {"Code": "123456"},
        "DisableGoogle2FA": {"Code": "123456"},
        "GetAuditLog": {"Limit": 10},
        "LockUser": {"UserId": victim_id},
        "UnlockUser": {"UserId": victim_id},
    }


def assert_refused(r: httpx.Response, what: str) -> None:
    assert r.status_code == 403, (what, r.status_code, r.text)
    body = r.json()
    assert body["result"] is False and body["errorcode"] == 20 and body["errormsg"].startswith("Not Authorized"), (what, body)


@pytest.mark.parametrize("admin", [False, True], ids=["user-key", "admin-key"])
async def test_key_cannot_manage_keys_2fa_or_admin(client: httpx.AsyncClient, kg: Keygate, make_user, make_key, admin: bool) -> None:
    owner, victim = await make_user(admin=admin), await make_user()
    created = await make_key(owner.user_id, ALL, ["203.0.113.0/24"])
    await kg.users.set_locked(OPERATOR, victim.user_id, True, reason="test")  # so UnlockUser would show
    token = await key_token(client, created)
    before = await state_of(kg, owner.user_id, victim.user_id)
    for endpoint, payload in attempts(created, victim.user_id).items():
        assert_refused(await client.post(f"/AP/{endpoint}", headers={"aptoken": token}, json=payload), f"{endpoint} via session")
        assert_refused(await client.post(f"/AP/{endpoint}", headers=signed(created), json=payload), f"{endpoint} signed")
    assert await state_of(kg, owner.user_id, victim.user_id) == before
    assert (await kg.users.require(victim.user_id)).locked is True
    # The stolen key still has exactly what it had, and the session still works (no side effect at all).
    r = await client.get("/AP/GetUserPermissions", headers={"aptoken": token})
    assert r.status_code == 200 and r.json() == ALL


async def test_admin_key_reads_only_its_own_user(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    admin, victim = await make_user(admin=True), await make_user()
    victim_key = await make_key(victim.user_id, ["Trading"])
    created = await make_key(admin.user_id, ALL)
    token = await key_token(client, created)
    for headers in ({"aptoken": token}, signed(created)):
        for endpoint in ("GetUserInfo", "GetUserAccounts", "GetUserPermissions"):
            r = await client.post(f"/AP/{endpoint}", headers=headers, json={"UserId": victim.user_id})
            assert r.status_code in (401, 403) and r.json()["errorcode"] == 20, (endpoint, r.text)
            assert victim.username not in r.text
        r = await client.post("/AP/GetUserAPIKeys", headers=headers, json={"UserId": victim.user_id})
        assert r.status_code == 404 and victim_key.key.api_key not in r.text
        r = await client.post("/AP/GetUserInfo", headers=headers)
        assert r.status_code == 200 and r.json()["UserId"] == admin.user_id


async def test_user_password_session_gets_no_admin_rights(client: httpx.AsyncClient, kg: Keygate, make_user) -> None:
    user, victim = await make_user(), await make_user()
    r = await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
    token = r.json()["SessionToken"]
    before = await state_of(kg, user.user_id, victim.user_id)
    for endpoint in ("GetAuditLog", "LockUser", "UnlockUser"):
        assert_refused(await client.post(f"/AP/{endpoint}", headers={"aptoken": token}, json={"UserId": victim.user_id}), endpoint)
    assert await state_of(kg, user.user_id, victim.user_id) == before


@pytest.mark.parametrize("perms", [[], ["Trading"], ["Withdraw", "Deposit"], ALL], ids=lambda p: "+".join(p) or "read-only")
async def test_key_session_has_exactly_its_keys_permissions(client: httpx.AsyncClient, make_user, make_key, perms: list[str]) -> None:
    user = await make_user(admin=True)
    created = await make_key(user.user_id, perms)
    expected = format_permissions(created.key.permissions)
    assert sorted(expected) == sorted(perms)
    token = await key_token(client, created)
    for headers in ({"aptoken": token}, signed(created)):
        r = await client.get("/AP/GetUserPermissions", headers=headers)
        assert r.status_code == 200 and r.json() == expected
