"""Helpers for service tests: sign in with a key or a password and get the caller's principal."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import text

from keygate.domain.signature import compute_signature
from keygate.service import Keygate, Principal
from keygate.service.auth import KeyCredentials
from keygate.service.keys import CreatedKey

CLIENT_IP = "127.0.0.1"


def key_credentials(created: CreatedKey, nonce: str | None = None, secret: str | None = None) -> KeyCredentials:
    nonce = nonce or str(secrets.randbelow(10**12))
    key = created.key
    return KeyCredentials(key.api_key, compute_signature(secret or created.secret, nonce, key.user_id, key.api_key), key.user_id, nonce)


@pytest.fixture
def key_session(kg: Keygate):  # type: ignore[no-untyped-def]
    """Authenticate with a key; return the session token."""

    async def sign_in(created: CreatedKey, ip: str = CLIENT_IP) -> str:
        return (await kg.auth.authenticate_key(key_credentials(created), ip)).token

    return sign_in


@pytest.fixture
def password_principal(kg: Keygate):  # type: ignore[no-untyped-def]
    """Sign in with username and password; return the principal of the new session."""

    async def sign_in(username: str, password: str) -> Principal:
        grant = await kg.auth.authenticate_password(username, password, CLIENT_IP)
        return await kg.auth.principal_for_token(grant.token, CLIENT_IP)  # type: ignore[union-attr]

    return sign_in


async def table_rows(kg: Keygate, table: str) -> list[tuple[object, ...]]:
    async with kg.engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(f"SELECT * FROM {table}"))).all()]


async def count_rows(kg: Keygate, table: str, where: str = "", **params: object) -> int:
    async with kg.engine.connect() as conn:
        sql = f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else "")
        return int((await conn.execute(text(sql), params)).scalar_one())
