"""Helpers for service tests: key credentials, raw reads of the database, and counted key look-ups."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import text

from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.auth import KeyCredentials
from keygate.service.keys import CreatedKey

CLIENT_IP = "127.0.0.1"


def key_credentials(created: CreatedKey, nonce: str | None = None, secret: str | None = None) -> KeyCredentials:
    nonce = nonce or str(secrets.randbelow(10**12))
    key = created.key
    return KeyCredentials(key.api_key, compute_signature(secret or created.secret, nonce, key.user_id, key.api_key), key.user_id, nonce)


async def table_rows(kg: Keygate, table: str) -> list[tuple[object, ...]]:
    async with kg.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(f"SELECT * FROM {table}"))).all()]


async def count_rows(kg: Keygate, table: str, where: str = "", **params: object) -> int:
    async with kg.engine.connect() as conn:
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int((await conn.execute(text(sql), params)).scalar_one())


def count_lookups(kg: Keygate, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every API key ``kg.keys.lookup`` is asked for from now on (the read a memo hit skips)."""
    calls: list[str] = []
    original = kg.keys.lookup

    async def counted(api_key: str):  # type: ignore[no-untyped-def]
        calls.append(api_key)
        return await original(api_key)

    monkeypatch.setattr(kg.keys, "lookup", counted)
    return calls
