"""Every endpoint of issue 2 answers a correct request by GET and by POST, with its APEX reply shape."""

from __future__ import annotations

import base64
import time

import httpx
import pyotp
import pytest
from api_helpers import key_token, password_token, signed_headers

from keygate.service import Keygate
from keygate.service.principal import OPERATOR

ENDPOINTS = ["Ping", "AuthenticateUser", "Authenticate", "Authenticate2FA", "WebAuthenticateUser", "LogOut", "GetUserInfo",
             "GetUserPermissions", "GetUserAccounts", "AddUserAPIKey", "GetUserAPIKeys", "UpdateUserAPIKey", "RemoveUserAPIKey"]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_endpoint_answers_get_and_post(client: httpx.AsyncClient, kg: Keygate, reader, make_user, make_key, endpoint: str, method: str) -> None:
    created = await make_key(reader.user_id, ["Trading"])
    headers: dict[str, str] = {}
    body: dict[str, object] | None = None
    if endpoint in ("AuthenticateUser", "Authenticate"):
        headers = signed_headers(created)
    elif endpoint == "WebAuthenticateUser":
        body = {"UserName": reader.username, "Password": reader.password}
    elif endpoint == "Authenticate2FA":
        user = await make_user()
        secret, _ = await kg.users.begin_totp(OPERATOR, user.user_id)
        await kg.users.confirm_totp(OPERATOR, user.user_id, pyotp.TOTP(secret).now())
        basic = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
        pending = (await client.get("/AP/Authenticate", headers={"Authorization": f"Basic {basic}"})).json()["Pending2FaToken"]
        headers = {"Pending2FaToken": pending}
        body = {"Code": pyotp.TOTP(secret).at(time.time() + 30)}
    elif endpoint in ("LogOut", "GetUserInfo", "GetUserPermissions", "GetUserAccounts", "GetUserAPIKeys"):
        headers = {"aptoken": await key_token(client, created)}
        body = {"UserId": reader.user_id}
    elif endpoint != "Ping":
        headers = {"aptoken": await password_token(client, reader.username, reader.password)}
        body = {"UserId": reader.user_id, "APIKey": created.key.api_key, "Permissions": ["Deposit"], "Label": "matrix"}

    r = await client.request(method, f"/AP/{endpoint}", headers=headers, json=body)
    assert r.status_code == 200, (endpoint, method, r.text)
    reply = r.json()
    shapes = {
        "Ping": lambda b: b == {"msg": "PONG"},
        "AuthenticateUser": lambda b: b["Authenticated"] is True and b["SessionToken"] and b["User"]["UserId"] == reader.user_id,
        "Authenticate": lambda b: b["Authenticated"] is True and b["SessionToken"],
        "WebAuthenticateUser": lambda b: b["Authenticated"] is True and b["SessionToken"],
        "Authenticate2FA": lambda b: b["Authenticated"] is True and b["SessionToken"] and isinstance(b["UserId"], int),
        "LogOut": lambda b: b == {"result": True, "errormsg": None, "errorcode": 0, "detail": None},
        "GetUserInfo": lambda b: b["UserId"] == reader.user_id and b["UserName"] == reader.username,
        "GetUserPermissions": lambda b: b == ["Trading"],
        "GetUserAccounts": lambda b: isinstance(b, list) and len(b) == 1,
        "AddUserAPIKey": lambda b: b["APISecret"] and b["Permissions"] == ["Deposit"] and b["Label"] == "matrix",
        "GetUserAPIKeys": lambda b: created.key.api_key in [k["APIKey"] for k in b],
        "UpdateUserAPIKey": lambda b: b["APIKey"] == created.key.api_key and b["Permissions"] == ["Deposit"],
        "RemoveUserAPIKey": lambda b: b == {"result": True, "errormsg": None, "errorcode": 0, "detail": None},
    }
    assert shapes[endpoint](reply), (endpoint, method, reply)
    if endpoint == "AddUserAPIKey":
        await client.post("/AP/RemoveUserAPIKey", headers=headers, json={"APIKey": reply["APIKey"]})
