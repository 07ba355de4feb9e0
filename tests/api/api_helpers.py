"""Helpers for in-process APEX API tests: signed headers, sign-in, reply shapes, database counts."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text

from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.keys import CreatedKey

GENERIC_KEYS = {"result", "errormsg", "errorcode", "detail"}


@dataclass(frozen=True)
class SharedUser:
    user_id: int
    username: str
    password: str


def signed_headers(created: CreatedKey, nonce: str | None = None, user_id: object = None) -> dict[str, str]:
    """The four APEX headers for ``created``, signed with a fresh nonce."""
    nonce = nonce or str(secrets.randbelow(10**12) + 10**12)
    uid = created.key.user_id if user_id is None else user_id
    return {
        "APIKey": created.key.api_key,
        "Signature": compute_signature(created.secret, nonce, uid, created.key.api_key),
        "UserId": str(uid),
        "Nonce": nonce,
    }


async def password_token(client: httpx.AsyncClient, username: str, password: str) -> str:
    r = await client.post("/AP/AuthenticateUser", json={"UserName": username, "Password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["Authenticated"] is True and body["SessionToken"], body
    return str(body["SessionToken"])


async def key_token(client: httpx.AsyncClient, created: CreatedKey) -> str:
    r = await client.post("/AP/AuthenticateUser", headers=signed_headers(created))
    assert r.status_code == 200, r.text
    return str(r.json()["SessionToken"])


def is_apex_error(response: httpx.Response) -> bool:
    """A 4xx whose JSON body is the generic object or the authentication failure object."""
    if not 400 <= response.status_code < 500:
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if GENERIC_KEYS <= body.keys():
        return body["result"] is False and isinstance(body["errormsg"], str) and body["errormsg"] and isinstance(body["errorcode"], int) and body["errorcode"] > 0
    if {"Authenticated", "Locked", "errormsg"} <= body.keys():
        return body["Authenticated"] is False and isinstance(body["Locked"], bool) and isinstance(body["errormsg"], str) and body["errormsg"]
    return False


def assert_apex_error(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    assert is_apex_error(response), (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text)
    assert "Traceback" not in response.text
    return response.json()  # type: ignore[no-any-return]


async def snapshot(kg: Keygate) -> dict[str, object]:
    """Everything a bad request must not change: users, keys (and their editable fields), sessions."""
    await kg.flush()
    async with kg.engine.connect() as conn:
        users = (await conn.execute(text("SELECT user_id, username, password_hash, is_admin, sealed_totp_secret FROM users ORDER BY user_id"))).all()
        keys = (await conn.execute(text("SELECT api_key, user_id, label, permissions, ip_allowlist, sealed_secret FROM api_keys ORDER BY api_key"))).all()
        sessions = (await conn.execute(text("SELECT token_hash, user_id, kind, permissions, api_key FROM sessions ORDER BY token_hash"))).all()
    return {"users": [tuple(r) for r in users], "keys": [tuple(r) for r in keys], "sessions": [tuple(r) for r in sessions]}
