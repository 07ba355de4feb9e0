"""Helpers for the abuse-resistance tests."""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

import httpx

from keygate.api import create_app
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.keys import CreatedKey


def random_ip() -> str:
    """A fresh address from the benchmarking range, so that per-IP counters never collide between tests."""
    return str(ipaddress.ip_address("198.18.0.0") + secrets.randbelow(2**17 - 2) + 1)


def signed(created, user_id: int, nonce: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    key = created.key.api_key
    return {"APIKey": key, "Signature": compute_signature(created.secret, nonce, user_id, key), "UserId": str(user_id), "Nonce": nonce}


def client_for(kg: Keygate, ip: str) -> httpx.AsyncClient:
    """An in-process client whose requests come from ``ip``."""
    transport = httpx.ASGITransport(app=create_app(keygate=kg), client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def client_at(app: Any, ip: str) -> httpx.AsyncClient:
    """An in-process client of ``app`` whose requests come from ``ip``."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url="http://testserver")


def fresh_signed(created: CreatedKey) -> dict[str, str]:
    """The four signed headers of ``created``'s key, with a fresh random nonce."""
    nonce = str(secrets.randbelow(10**12) + 10**12)
    uid = created.key.user_id
    return {"APIKey": created.key.api_key, "Signature": compute_signature(created.secret, nonce, uid, created.key.api_key),
            "UserId": str(uid), "Nonce": nonce}


async def key_token(client: httpx.AsyncClient, created: CreatedKey) -> str:
    r = await client.post("/AP/AuthenticateUser", headers=fresh_signed(created))
    assert r.status_code == 200, r.text
    return str(r.json()["SessionToken"])


async def password_token(client: httpx.AsyncClient, username: str, password: str) -> str:
    r = await client.post("/AP/AuthenticateUser", json={"UserName": username, "Password": password})
    assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text
    return str(r.json()["SessionToken"])
