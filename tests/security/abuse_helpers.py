"""Helpers for the abuse-resistance tests."""

from __future__ import annotations

import ipaddress
import secrets

import httpx

from keygate.api import create_app
from keygate.domain.signature import compute_signature
from keygate.service import Keygate


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
