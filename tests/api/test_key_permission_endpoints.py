"""AddUserAPIKeyPermission, RemoveUserAPIKeyPermission and GetAvailablePermissionList, over HTTP and WebSocket."""

from __future__ import annotations

import httpx
from api_helpers import signed_headers
from live_helpers import (
    ask,
    body,
    check_against_document,
    frame,
    password_token,
    reply_schema,
    ws_url,
)
from websockets.asyncio.client import connect


async def _key_token(client: httpx.AsyncClient, created) -> str:  # type: ignore[no-untyped-def]
    r = await client.post("/AP/AuthenticateUser", headers=signed_headers(created))
    assert r.status_code == 200, r.text
    return str(r.json()["SessionToken"])


async def test_add_and_remove_one_permission_over_http(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    owner, stranger = await make_user(), await make_user()
    created = await make_key(owner.user_id, ["Trading"])
    api_key = created.key.api_key
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        doc = (await client.get("/openapi.json")).json()
        password = {"aptoken": await password_token(client, owner.username, owner.password)}
        key_session = {"aptoken": await _key_token(client, created)}

        # A key session may read, never change a key.
        r = await client.post("/AP/AddUserAPIKeyPermission", headers=key_session, json={"APIKey": api_key, "Permission": "Withdraw"})
        assert r.status_code == 403 and r.json()["errorcode"] == 20

        r = await client.post("/ap/adduserapikeypermission", headers=password, json={"APIKey": api_key, "Permission": "withdraw"})
        assert r.status_code == 200, r.text
        added = r.json()
        check_against_document(doc, reply_schema(doc, "/AP/AddUserAPIKeyPermission", 200), added)
        assert added["Permissions"] == ["Trading", "Withdraw"]
        assert "APISecret" not in added
        # As with UpdateUserAPIKey, the key's live sessions have the new rights at once.
        r = await client.post("/AP/GetUserPermissions", headers=key_session)
        assert r.status_code == 200 and r.json() == ["Trading", "Withdraw"]

        again = (await client.get("/AP/AddUserAPIKeyPermission", headers=password, params={"APIKey": api_key, "Permission": "Withdraw"})).json()
        assert again["Permissions"] == ["Trading", "Withdraw"]

        removed = (await client.post("/AP/RemoveUserAPIKeyPermission", headers=password, json={"APIKey": api_key, "Permission": "Trading"})).json()
        assert removed["Permissions"] == ["Withdraw"]
        assert (await client.post("/AP/GetUserPermissions", headers=key_session)).json() == ["Withdraw"]
        lacking = (await client.post("/AP/RemoveUserAPIKeyPermission", headers=password, json={"APIKey": api_key, "Permission": "Deposit"})).json()
        assert lacking["Permissions"] == ["Withdraw"]
        as_list = (await client.post("/AP/AddUserAPIKeyPermission", headers=password, json={"APIKey": api_key, "Permissions": ["Deposit"]})).json()
        assert as_list["Permissions"] == ["Withdraw", "Deposit"]
        as_list = (await client.post("/AP/RemoveUserAPIKeyPermission", headers=password, json={"APIKey": api_key, "Permissions": ["Deposit"]})).json()
        assert as_list["Permissions"] == ["Withdraw"]
        listed = (await client.post("/AP/GetUserAPIKeys", headers=password)).json()
        assert [k["Permissions"] for k in listed if k["APIKey"] == api_key] == [["Withdraw"]]

        # Refusals name the problem; another user's key is not found.
        r = await client.post("/AP/AddUserAPIKeyPermission", headers=password, json={"APIKey": api_key, "Permission": "Fly"})
        assert r.status_code == 400 and "Fly" in r.json()["errormsg"]
        r = await client.post("/AP/AddUserAPIKeyPermission", headers=password, json={"APIKey": api_key})
        assert r.status_code == 400 and "Permission" in r.json()["errormsg"]
        r = await client.post("/AP/RemoveUserAPIKeyPermission", headers=password, json={"Permission": "Trading"})
        assert r.status_code == 400 and "APIKey" in r.json()["errormsg"]
        stranger_session = {"aptoken": await password_token(client, stranger.username, stranger.password)}
        r = await client.post("/AP/RemoveUserAPIKeyPermission", headers=stranger_session, json={"APIKey": api_key, "Permission": "Withdraw"})
        assert r.status_code == 404 and r.json()["errorcode"] == 104
        r = await client.post("/AP/AddUserAPIKeyPermission", json={"APIKey": api_key, "Permission": "Deposit"})
        assert r.status_code == 401


async def test_an_administrator_may_change_another_users_key(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    admin, owner = await make_user(admin=True), await make_user()
    created = await make_key(owner.user_id, [])
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        headers = {"aptoken": await password_token(client, admin.username, admin.password)}
        r = await client.post("/AP/AddUserAPIKeyPermission", headers=headers,
                              json={"UserId": owner.user_id, "APIKey": created.key.api_key, "Permission": "Deposit"})
    assert r.status_code == 200 and r.json()["Permissions"] == ["Deposit"]


async def test_available_permissions_over_http(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, [])
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        for headers in ({"aptoken": await password_token(client, user.username, user.password)},
                        {"aptoken": await _key_token(client, created)}, signed_headers(created)):
            r = await client.get("/AP/GetAvailablePermissionList", headers=headers)
            assert (r.status_code, r.json()) == (200, ["Deposit", "Trading", "Withdraw"])
        r = await client.post("/AP/GetAvailablePermissionList")
        assert r.status_code == 401 and r.json()["errorcode"] == 20


async def test_the_key_permission_calls_over_websocket(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    owner = await make_user()
    created = await make_key(owner.user_id, ["Trading"])
    api_key = created.key.api_key
    async with connect(ws_url(server, "/WSGateway/")) as ws:
        refused = await ask(ws, frame(1, "GetAvailablePermissionList"))
        assert refused["m"] == 1 and body(refused)["errorcode"] == 20
        assert body(await ask(ws, frame(2, "AuthenticateUser", {"UserName": owner.username, "Password": owner.password})))["Authenticated"]
        assert body(await ask(ws, frame(3, "GetAvailablePermissionList"))) == ["Deposit", "Trading", "Withdraw"]
        added = await ask(ws, frame(4, "addUserAPIKeyPermission", {"APIKey": api_key, "Permission": "Deposit"}))
        assert added["n"] == "addUserAPIKeyPermission"
        assert body(added)["Permissions"] == ["Trading", "Deposit"]
        removed = body(await ask(ws, frame(5, "RemoveUserAPIKeyPermission", {"APIKey": api_key, "Permission": "Trading"})))
        assert removed["Permissions"] == ["Deposit"]
        bad = body(await ask(ws, frame(6, "RemoveUserAPIKeyPermission", {"APIKey": api_key, "Permission": "Fly"})))
        assert bad["result"] is False and bad["errorcode"] == 100 and "Fly" in bad["errormsg"]
