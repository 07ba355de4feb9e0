"""Private calls: session token or per-request signature, permissions reported, ownership enforced."""

from __future__ import annotations

import httpx
import pytest
from api_helpers import assert_apex_error, key_token, password_token, signed_headers


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_user_info_with_token_and_with_signed_headers(client: httpx.AsyncClient, reader, make_key, method: str) -> None:
    user = reader
    created = await make_key(user.user_id, ["Trading"])
    token = await key_token(client, created)
    for headers in ({"aptoken": token}, signed_headers(created)):
        r = await client.request(method, "/ap/GetUserInfo", headers=headers)
        assert r.status_code == 200, r.text
        info = r.json()
        assert info["UserId"] == user.user_id and info["UserName"] == user.username
        assert info["Email"] == "reader@example.com" and info["OMSId"] == 1 and info["Use2FA"] is False
        assert isinstance(info["AccountId"], int)


@pytest.mark.parametrize("perms", [[], ["Trading"], ["Withdraw", "Deposit"], ["trading", "withdraw", "deposit"]])
async def test_permissions_of_a_key_session_are_the_keys(client: httpx.AsyncClient, reader, make_key, perms: list[str]) -> None:
    user = reader
    created = await make_key(user.user_id, perms)
    expected = [p for p in ("Trading", "Withdraw", "Deposit") if p.lower() in {q.lower() for q in perms}]
    token = await key_token(client, created)
    for headers in ({"aptoken": token}, signed_headers(created)):
        r = await client.post("/AP/GetUserPermissions", headers=headers, json={"UserId": user.user_id})
        assert r.status_code == 200 and r.json() == expected


async def test_password_session_has_every_permission(client: httpx.AsyncClient, reader) -> None:
    user = reader
    token = await password_token(client, user.username, user.password)
    r = await client.get("/AP/GetUserPermissions", headers={"aptoken": token})
    assert r.status_code == 200 and r.json() == ["Trading", "Withdraw", "Deposit"]


async def test_user_accounts(client: httpx.AsyncClient, reader, make_key) -> None:
    user = reader
    token = await key_token(client, await make_key(user.user_id))
    for payload in (None, {"UserId": user.user_id}, {"UserId": str(user.user_id)}):
        r = await client.post("/AP/GetUserAccounts", headers={"aptoken": token}, json=payload)
        assert r.status_code == 200
        accounts = r.json()
        assert isinstance(accounts, list) and len(accounts) == 1 and isinstance(accounts[0], int)
    r = await client.get(f"/AP/GetUserAccounts?UserId={user.user_id}", headers={"aptoken": token})
    assert r.status_code == 200 and r.json() == accounts


@pytest.mark.parametrize("endpoint", ["GetUserInfo", "GetUserAccounts", "GetUserPermissions", "GetUserAPIKeys"])
async def test_another_users_data_is_refused(client: httpx.AsyncClient, reader, bystander, make_key, endpoint: str) -> None:
    alice, bob = reader, bystander
    await make_key(bob.user_id)
    for token in (await key_token(client, await make_key(alice.user_id)), await password_token(client, alice.username, alice.password)):
        r = await client.post(f"/AP/{endpoint}", headers={"aptoken": token}, json={"UserId": bob.user_id})
        assert_apex_error(r)
        assert r.status_code in (401, 403, 404)
        assert bob.username not in r.text


async def test_admin_password_session_reads_another_user(client: httpx.AsyncClient, make_user, make_key) -> None:
    admin, bob = await make_user(admin=True), await make_user()
    token = await password_token(client, admin.username, admin.password)
    r = await client.post("/AP/GetUserInfo", headers={"aptoken": token}, json={"UserId": bob.user_id})
    assert r.status_code == 200 and r.json()["UserName"] == bob.username
    # Not with a key of the same admin.
    key_session = await key_token(client, await make_key(admin.user_id, ["Trading", "Withdraw", "Deposit"]))
    assert_apex_error(await client.post("/AP/GetUserInfo", headers={"aptoken": key_session}, json={"UserId": bob.user_id}))


@pytest.mark.parametrize("endpoint", ["GetUserInfo", "GetUserPermissions", "GetUserAccounts", "GetUserAPIKeys", "LogOut",
                                      "AddUserAPIKey", "UpdateUserAPIKey", "RemoveUserAPIKey"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_private_endpoints_need_credentials(client: httpx.AsyncClient, endpoint: str, method: str) -> None:
    for headers in ({}, {"aptoken": "00000000-0000-0000-0000-000000000000"}, {"aptoken": ""}):
        body = assert_apex_error(await client.request(method, f"/AP/{endpoint}", headers=headers), 401)
        assert body["errorcode"] == 20


async def test_signed_request_with_bad_signature_is_refused(client: httpx.AsyncClient, reader, make_key) -> None:
    user = reader
    created = await make_key(user.user_id)
    headers = {**signed_headers(created), "Signature": "f" * 64}
    body = assert_apex_error(await client.get("/AP/GetUserInfo", headers=headers), 401)
    assert user.username not in str(body)


async def test_revoked_key_stops_per_request_signatures_and_sessions_at_once(client: httpx.AsyncClient, reader, make_key) -> None:
    user = reader
    created = await make_key(user.user_id)
    token = await key_token(client, created)
    pw = await password_token(client, user.username, user.password)
    r = await client.post("/AP/RemoveUserAPIKey", headers={"aptoken": pw}, json={"UserId": user.user_id, "APIKey": created.key.api_key})
    assert r.status_code == 200 and r.json()["result"] is True
    assert_apex_error(await client.get("/AP/GetUserInfo", headers={"aptoken": token}), 401)
    assert_apex_error(await client.get("/AP/GetUserInfo", headers=signed_headers(created)), 401)
    assert_apex_error(await client.post("/AP/AuthenticateUser", headers=signed_headers(created)), 401)
