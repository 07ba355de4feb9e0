"""/keygate/authorize: an operator's proxy asks keygate who is calling, and gets an APEX refusal or an identity."""

from __future__ import annotations

import time

import httpx

from keygate.api import create_app
from keygate.domain.signature import compute_signature


def _client(kg, peer: str = "127.0.0.1") -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(keygate=kg), client=(peer, 5000)), base_url="http://testserver")


async def test_a_signed_request_is_authorized_with_its_identity_and_permissions(kg, make_user, make_key):
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    nonce = str(int(time.time() * 1000))
    headers = {"APIKey": created.key.api_key, "UserId": str(user.user_id), "Nonce": nonce,
               "Signature": compute_signature(created.secret, nonce, user.user_id, created.key.api_key)}
    async with _client(kg) as client:
        r = await client.get("/keygate/authorize", headers=headers, params={"require": "Trading"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Keygate-User-Id"] == str(user.user_id)
        assert r.headers["X-Keygate-Username"] == user.username
        assert r.headers["X-Keygate-Permissions"] == "Trading"
        assert r.headers["X-Keygate-Api-Key"] == created.key.api_key
        assert r.headers["X-Keygate-Auth"] == "key"
        denied = await client.get("/keygate/authorize", headers=headers, params={"require": "Withdraw"})
        assert denied.status_code == 403 and denied.json()["errorcode"] == 20 and "Withdraw" in denied.json()["errormsg"]


async def test_a_session_token_is_authorized_and_a_missing_one_refused(kg, make_user, make_key):
    user = await make_user()
    created = await make_key(user.user_id, ["Deposit"])
    nonce = "1"
    async with _client(kg) as client:
        auth = await client.post("/AP/AuthenticateUser", headers={
            "APIKey": created.key.api_key, "UserId": str(user.user_id), "Nonce": nonce,
            "Signature": compute_signature(created.secret, nonce, user.user_id, created.key.api_key)})
        token = auth.json()["SessionToken"]
        r = await client.post("/keygate/authorize", headers={"APToken": token})
        assert r.status_code == 200 and r.json()["Permissions"] == ["Deposit"]
        r = await client.get("/keygate/authorize")
        assert r.status_code == 401 and r.json()["result"] is False and "aptoken" in r.json()["errormsg"]
        r = await client.get("/keygate/authorize", params={"require": "Flying"}, headers={"aptoken": token})
        assert r.status_code == 400 and "Flying" in r.json()["errormsg"]


async def test_it_is_in_the_openapi_document(kg):
    async with _client(kg) as client:
        doc = (await client.get("/openapi.json")).json()
    assert "/keygate/authorize" in doc["paths"]
