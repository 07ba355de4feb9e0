"""Threat: reaching another user's API keys and data.

User A, signed in with a password (full rights over A's own keys) or holding one of A's keys, names
user B's UserId or B's APIKey to list, edit, rotate or delete B's keys, or to read B's user record
and accounts. Each answer is the one A gets for a user or key that does not exist, so A cannot even
tell that B's key is real, and nothing of B's changes. An administrator's password session may.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from abuse_helpers import client_at, password_token
from abuse_helpers import fresh_signed as signed
from fastapi import FastAPI
from sqlalchemy import select

from keygate.api import create_app
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from keygate.store.tables import api_keys, sessions

CLIENT_IP = "203.0.113.7"
MISSING_USER = 987_654_321
MISSING_KEY = "Z" * 32


@pytest.fixture(scope="module")
def app(kg: Keygate) -> FastAPI:
    return create_app(keygate=kg)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_at(app, CLIENT_IP) as c:
        yield c


async def keys_of(kg: Keygate, user_id: int) -> list[tuple[Any, ...]]:
    """B's keys as stored (secret and rights included), and how many sessions B's keys have."""
    await kg.flush()
    async with kg.engine.connect() as conn:
        rows = (await conn.execute(select(*(c for c in api_keys.c if c.name != "last_used_at"))
                                   .where(api_keys.c.user_id == user_id).order_by(api_keys.c.api_key))).all()
        live = (await conn.execute(select(sessions.c.token_hash).where(sessions.c.user_id == user_id))).all()
    return [tuple(r) for r in rows] + [("sessions", len(live))]


def key_requests(user_id: object, api_key: str) -> dict[str, dict[str, Any]]:
    return {
        "GetUserAPIKeys": {"UserId": user_id},
        "UpdateUserAPIKey": {"UserId": user_id, "APIKey": api_key, "Permissions": ["Withdraw"], "IpAllowlist": [], "Label": "pwned"},
        "RotateUserAPIKey": {"UserId": user_id, "APIKey": api_key, "GraceSeconds": 0},
        "RemoveUserAPIKey": {"UserId": user_id, "APIKey": api_key},
    }


def same_shape(r: httpx.Response, missing: httpx.Response, user_id: int) -> None:
    """``r`` is the missing-thing answer, but for the id in its message."""
    assert r.status_code == missing.status_code == 404, (r.text, missing.text)
    mine = r.content.replace(f"User {user_id} ".encode(), b"User <id> ")
    assert mine == missing.content.replace(f"User {MISSING_USER} ".encode(), b"User <id> ")


async def test_password_session_cannot_touch_another_users_keys(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    a, b = await make_user(), await make_user()
    b_key = await make_key(b.user_id, ["Trading"], ["203.0.113.0/24"])
    b_session = (await client.post("/AP/AuthenticateUser", headers=signed(b_key))).json()["SessionToken"]
    await make_key(a.user_id)
    pw = {"aptoken": await password_token(client, a.username, a.password)}
    before = await keys_of(kg, b.user_id)

    named = key_requests(b.user_id, b_key.key.api_key)
    missing_user = key_requests(MISSING_USER, MISSING_KEY)
    for endpoint, payload in named.items():
        r = await client.post(f"/AP/{endpoint}", headers=pw, json=payload)
        same_shape(r, await client.post(f"/AP/{endpoint}", headers=pw, json=missing_user[endpoint]), b.user_id)
        assert b_key.key.api_key not in r.text and b.username not in r.text

    # Naming only B's key (UserId defaults to A) answers exactly what a key that does not exist answers.
    for endpoint in ("UpdateUserAPIKey", "RotateUserAPIKey", "RemoveUserAPIKey"):
        payload = {k: v for k, v in named[endpoint].items() if k != "UserId"}
        r = await client.post(f"/AP/{endpoint}", headers=pw, json=payload)
        ghost = await client.post(f"/AP/{endpoint}", headers=pw, json={**payload, "APIKey": MISSING_KEY})
        assert r.status_code == 404 and (r.status_code, r.content) == (ghost.status_code, ghost.content), endpoint

    assert await keys_of(kg, b.user_id) == before
    r = await client.get("/AP/GetUserInfo", headers={"aptoken": b_session})
    assert r.status_code == 200, "B's key session survived every attempt"


async def test_key_of_a_cannot_touch_another_users_keys(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    a, b = await make_user(), await make_user()
    a_key = await make_key(a.user_id, ["Trading", "Withdraw", "Deposit"])
    b_key = await make_key(b.user_id, ["Trading"])
    before = await keys_of(kg, b.user_id)
    r = await client.post("/AP/GetUserAPIKeys", headers=signed(a_key), json={"UserId": b.user_id})
    ghost = await client.post("/AP/GetUserAPIKeys", headers=signed(a_key), json={"UserId": MISSING_USER})
    same_shape(r, ghost, b.user_id)
    for endpoint, payload in key_requests(b.user_id, b_key.key.api_key).items():
        r = await client.post(f"/AP/{endpoint}", headers=signed(a_key), json=payload)
        assert r.status_code in (403, 404) and b_key.key.api_key not in r.text, (endpoint, r.text)
    assert await keys_of(kg, b.user_id) == before


async def test_cannot_read_another_users_info_or_accounts(client: httpx.AsyncClient, make_user, make_key) -> None:
    a, b = await make_user(), await make_user()
    a_key = await make_key(a.user_id)
    pw = {"aptoken": await password_token(client, a.username, a.password)}
    for headers in (pw, None):
        for endpoint in ("GetUserInfo", "GetUserAccounts"):
            h = headers or signed(a_key)
            r = await client.post(f"/AP/{endpoint}", headers=h, json={"UserId": b.user_id})
            ghost = await client.post(f"/AP/{endpoint}", headers=headers or signed(a_key), json={"UserId": MISSING_USER})
            assert r.status_code in (401, 403) and r.json()["errorcode"] == 20, r.text
            assert (r.status_code, r.content) == (ghost.status_code, ghost.content)
            assert b.username not in r.text
            via_query = await client.get(f"/AP/{endpoint}?UserId={b.user_id}", headers=headers or signed(a_key))
            assert via_query.status_code == r.status_code


async def test_admin_password_session_manages_another_users_keys(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    admin, b = await make_user(admin=True), await make_user()
    b_key = await make_key(b.user_id, ["Trading"])
    pw = {"aptoken": await password_token(client, admin.username, admin.password)}
    r = await client.post("/AP/GetUserAPIKeys", headers=pw, json={"UserId": b.user_id})
    assert r.status_code == 200 and [k["APIKey"] for k in r.json()] == [b_key.key.api_key]
    assert b_key.secret not in r.text
    r = await client.post("/AP/UpdateUserAPIKey", headers=pw, json={"UserId": b.user_id, "APIKey": b_key.key.api_key, "Permissions": ["Deposit"]})
    assert r.status_code == 200 and r.json()["Permissions"] == ["Deposit"] and r.json()["UserId"] == b.user_id
    r = await client.post("/AP/GetUserInfo", headers=pw, json={"UserId": b.user_id})
    assert r.status_code == 200 and r.json()["UserName"] == b.username
    r = await client.post("/AP/RemoveUserAPIKey", headers=pw, json={"UserId": b.user_id, "APIKey": b_key.key.api_key})
    assert r.status_code == 200 and r.json()["result"] is True
    assert await kg.keys.lookup(b_key.key.api_key) is None
    events = await kg.audit.query(OPERATOR, action="key.delete", api_key=b_key.key.api_key)
    assert [(e.actor_user_id, e.subject_user_id) for e in events] == [(admin.user_id, b.user_id)]
