"""Secrets and session tokens never reach logs, error replies, listings or the database."""

from __future__ import annotations

import logging

import httpx
import pytest
from api_helpers import password_token
from sqlalchemy import text

from keygate.domain.signature import compute_signature
from keygate.service import Keygate


async def _all_database_text(kg: Keygate) -> bytes:
    await kg.flush()
    chunks: list[bytes] = []
    async with kg.engine.connect() as conn:
        for table in ("users", "api_keys", "sessions", "audit_events"):
            for row in (await conn.execute(text(f"SELECT * FROM {table}"))).all():
                for value in row:
                    chunks.append(bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode())
    return b"\n".join(chunks)


async def test_secret_and_tokens_stay_out_of_logs_replies_and_database(
    client: httpx.AsyncClient, kg: Keygate, make_user, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user = await make_user()
    pw_token = await password_token(client, user.username, user.password)
    pw = {"aptoken": pw_token}
    created = (await client.post("/AP/AddUserAPIKey", headers=pw, json={"Permissions": ["Trading"]})).json()
    secret, api_key = created["APISecret"], created["APIKey"]
    nonce = "1700000000123"
    headers = {"APIKey": api_key, "UserId": str(user.user_id), "Nonce": nonce,
               "Signature": compute_signature(secret, nonce, user.user_id, api_key)}
    key_session = (await client.post("/AP/AuthenticateUser", headers=headers)).json()["SessionToken"]

    replies = []
    for r in (
        await client.post("/AP/AuthenticateUser", headers={**headers, "Signature": "0" * 64}),
        await client.post("/AP/AuthenticateUser", headers={**headers, "UserId": "x"}),
        await client.get("/AP/GetUserInfo", headers=headers),
        await client.get("/AP/GetUserAPIKeys", headers={"aptoken": key_session}),
        await client.post("/AP/UpdateUserAPIKey", headers=pw, json={"APIKey": api_key, "Label": "renamed"}),
        await client.post("/AP/UpdateUserAPIKey", headers=pw, json={"APIKey": api_key, "IpAllowlist": ["bad entry"]}),
        await client.get("/AP/LogOut", headers={"aptoken": key_session}),
        await client.get("/AP/GetUserInfo", headers={"aptoken": key_session}),
    ):
        assert r.status_code < 500
        replies.append(r.text)
    everything = "\n".join(replies)
    assert secret not in everything and key_session not in everything and pw_token not in everything

    logged = caplog.text
    for value in (secret, key_session, pw_token, user.password):
        assert value not in logged

    stored = await _all_database_text(kg)
    for value in (secret, key_session, pw_token, user.password, headers["Signature"]):
        assert value.encode() not in stored
    assert bytes.fromhex(secret) not in stored
