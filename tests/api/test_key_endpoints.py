"""API-key management over the APEX wire: add, list, update, remove; who may do it."""

from __future__ import annotations

import httpx
import pytest
from api_helpers import assert_apex_error, key_token, password_token, signed_headers

from keygate.service import Keygate


async def test_add_list_update_remove(client: httpx.AsyncClient, make_user) -> None:
    user = await make_user()
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    r = await client.post("/AP/AddUserAPIKey", headers=pw, json={"UserId": str(user.user_id), "Permissions": ["Trading", "deposit"],
                                                                  "IpAllowlist": ["198.18.0.0/15", "2001:db8::1"], "Label": "bot"})
    assert r.status_code == 200, r.text
    created = r.json()
    assert r.headers.get("cache-control") == "no-store"
    assert {"APIKey", "APISecret", "UserId", "Permissions", "Nonce"} <= created.keys()
    assert created["UserId"] == user.user_id and created["Permissions"] == ["Trading", "Deposit"]
    assert created["IpAllowlist"] == ["198.18.0.0/15", "2001:db8::1"] and created["Label"] == "bot"
    secret = created["APISecret"]

    r = await client.post("/AP/GetUserAPIKeys", headers=pw, json={"UserId": user.user_id})
    assert r.status_code == 200
    listed = r.json()
    assert [k["APIKey"] for k in listed] == [created["APIKey"]]
    assert "APISecret" not in listed[0] and secret not in r.text

    # The new key signs in, with exactly its permissions.
    from keygate.domain.signature import compute_signature

    headers = {"APIKey": created["APIKey"], "UserId": str(user.user_id), "Nonce": created["Nonce"],
               "Signature": compute_signature(secret, created["Nonce"], user.user_id, created["APIKey"])}
    token = (await client.post("/AP/AuthenticateUser", headers=headers)).json()["SessionToken"]
    assert (await client.get("/AP/GetUserPermissions", headers={"aptoken": token})).json() == ["Trading", "Deposit"]

    r = await client.post("/AP/UpdateUserAPIKey", headers=pw, json={"UserId": user.user_id, "APIKey": created["APIKey"], "Label": "renamed"})
    assert r.status_code == 200 and r.json()["Label"] == "renamed"
    assert r.json()["Permissions"] == ["Trading", "Deposit"] and secret not in r.text
    assert (await client.get("/AP/GetUserInfo", headers={"aptoken": token})).status_code == 200

    r = await client.post("/AP/UpdateUserAPIKey", headers=pw, json={"APIKey": created["APIKey"], "Permissions": ["Withdraw"], "IpAllowlist": []})
    assert r.status_code == 200
    assert r.json()["Permissions"] == ["Withdraw"] and r.json()["IpAllowlist"] == [] and r.json()["Label"] == "renamed"
    # The live session has the key's new rights at once.
    assert (await client.get("/AP/GetUserPermissions", headers={"aptoken": token})).json() == ["Withdraw"]

    r = await client.post("/AP/RemoveUserAPIKey", headers=pw, json={"UserId": user.user_id, "APIKey": created["APIKey"]})
    assert r.status_code == 200 and r.json() == {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
    assert (await client.post("/AP/GetUserAPIKeys", headers=pw, json={"UserId": user.user_id})).json() == []
    assert_apex_error(await client.post("/AP/RemoveUserAPIKey", headers=pw, json={"UserId": user.user_id, "APIKey": created["APIKey"]}), 404)


async def test_add_key_by_get_with_defaults(client: httpx.AsyncClient, make_user) -> None:
    user = await make_user()
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    r = await client.get("/ap/adduserapikey", headers=pw)
    assert r.status_code == 200, r.text
    assert r.json()["Permissions"] == [] and r.json()["IpAllowlist"] == [] and r.json()["UserId"] == user.user_id


@pytest.mark.parametrize("endpoint", ["AddUserAPIKey", "UpdateUserAPIKey", "RemoveUserAPIKey"])
async def test_key_session_may_not_manage_keys(client: httpx.AsyncClient, kg: Keygate, make_user, make_key, endpoint: str) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading", "Withdraw", "Deposit"])
    token = await key_token(client, created)
    payload = {"UserId": user.user_id, "APIKey": created.key.api_key, "Permissions": ["Trading"], "Label": "x"}
    for headers in ({"aptoken": token}, signed_headers(created)):
        r = await client.post(f"/AP/{endpoint}", headers=headers, json=payload)
        body = assert_apex_error(r, 403)
        assert body["errorcode"] == 20 and "Not Authorized" in body["errormsg"]
    keys = await kg.keys.list(_owner(await kg.users.require(user.user_id)), user.user_id)
    assert len(keys) == 1 and keys[0].label == "" and len(keys[0].permissions) == 3


async def test_key_session_may_list_its_users_keys_without_secrets(client: httpx.AsyncClient, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    r = await client.get("/AP/GetUserAPIKeys", headers=signed_headers(created))
    assert r.status_code == 200 and [k["APIKey"] for k in r.json()] == [created.key.api_key]
    assert created.secret not in r.text


async def test_user_cannot_manage_another_users_keys_but_admin_can(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    alice, bob, admin = await make_user(), await make_user(), await make_user(admin=True)
    bobs = await make_key(bob.user_id, ["Trading"], label="bob")
    pw = {"aptoken": await password_token(client, alice.username, alice.password)}
    attempts = [
        ("GetUserAPIKeys", {"UserId": bob.user_id}),
        ("AddUserAPIKey", {"UserId": bob.user_id}),
        ("UpdateUserAPIKey", {"UserId": bob.user_id, "APIKey": bobs.key.api_key, "Label": "alice was here"}),
        ("UpdateUserAPIKey", {"APIKey": bobs.key.api_key, "Label": "alice was here"}),
        ("RemoveUserAPIKey", {"UserId": bob.user_id, "APIKey": bobs.key.api_key}),
        ("RemoveUserAPIKey", {"APIKey": bobs.key.api_key}),
    ]
    for endpoint, payload in attempts:
        r = await client.post(f"/AP/{endpoint}", headers=pw, json=payload)
        assert_apex_error(r)
        assert r.status_code in (403, 404) and bobs.key.api_key not in r.text
    bob_keys = await kg.keys.list(_owner(await kg.users.require(bob.user_id)), bob.user_id)
    assert [(k.api_key, k.label) for k in bob_keys] == [(bobs.key.api_key, "bob")]

    adm = {"aptoken": await password_token(client, admin.username, admin.password)}
    r = await client.post("/AP/GetUserAPIKeys", headers=adm, json={"UserId": bob.user_id})
    assert r.status_code == 200 and [k["APIKey"] for k in r.json()] == [bobs.key.api_key]
    r = await client.post("/AP/UpdateUserAPIKey", headers=adm, json={"UserId": bob.user_id, "APIKey": bobs.key.api_key, "Label": "by admin"})
    assert r.status_code == 200 and r.json()["Label"] == "by admin"
    r = await client.post("/AP/AddUserAPIKey", headers=adm, json={"UserId": bob.user_id, "Permissions": []})
    assert r.status_code == 200 and r.json()["UserId"] == bob.user_id
    r = await client.post("/AP/RemoveUserAPIKey", headers=adm, json={"UserId": bob.user_id, "APIKey": bobs.key.api_key})
    assert r.status_code == 200
    assert [k.api_key for k in await kg.keys.list(_owner(await kg.users.require(bob.user_id)), bob.user_id)] != [bobs.key.api_key]


def _owner(user):  # type: ignore[no-untyped-def]
    from keygate.service.principal import OPERATOR

    return OPERATOR


async def test_update_and_remove_by_get_with_a_json_body(client: httpx.AsyncClient, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    r = await client.request("GET", "/ap/updateuserapikey", headers=pw, json={"APIKey": created.key.api_key, "Label": "via GET"})
    assert r.status_code == 200 and r.json()["Label"] == "via GET"
    r = await client.request("GET", f"/AP/RemoveUserAPIKey?APIKey={created.key.api_key}", headers=pw)
    assert r.status_code == 200 and r.json()["result"] is True
    assert (await client.get("/AP/GetUserAPIKeys", headers=pw)).json() == []
