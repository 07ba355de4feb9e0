"""Sign-in over the APEX wire: every credential form, path spelling, and the failure replies."""

from __future__ import annotations

import base64

import httpx
import pytest
from api_helpers import assert_apex_error, key_token, password_token, signed_headers

from keygate.api import create_app
from keygate.service import Keygate
from keygate.service.principal import OPERATOR


def assert_authenticated(r: httpx.Response, user_id: int, username: str) -> str:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["Authenticated"] is True and body["Locked"] is False and body["Requires2FA"] is False
    assert body["errormsg"] is None and body["TwoFAType"] is None and body["TwoFAToken"] is None and body["EnforceEnable2FA"] is False
    assert body["User"]["UserId"] == user_id and body["User"]["UserName"] == username
    assert set(body["User"]) >= {"UserId", "UserName", "Email", "EmailVerified", "AccountId", "OMSId", "Use2FA"}
    token = body["SessionToken"]
    assert isinstance(token, str) and len(token.replace("-", "")) >= 32
    return str(token)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("endpoint", ["AuthenticateUser", "Authenticate"])
async def test_four_headers(client: httpx.AsyncClient, reader, make_key, method: str, endpoint: str) -> None:
    user = reader
    created = await make_key(user.user_id, ["Trading"])
    r = await client.request(method, f"/AP/{endpoint}", headers=signed_headers(created))
    token = assert_authenticated(r, user.user_id, user.username)
    info = await client.get("/AP/GetUserInfo", headers={"aptoken": token})
    assert info.status_code == 200 and info.json()["UserId"] == user.user_id


@pytest.mark.parametrize(
    "path",
    ["/AP/AuthenticateUser", "/ap/AuthenticateUser", "/ap/authenticateuser", "/Ap/AUTHENTICATEUSER", "/aP/aUtHeNtIcAtEuSeR"],
)
async def test_path_prefix_and_endpoint_case(client: httpx.AsyncClient, reader, make_key, path: str) -> None:
    user = reader
    created = await make_key(user.user_id)
    assert_authenticated(await client.post(path, headers=signed_headers(created)), user.user_id, user.username)


async def test_uppercase_signature_and_header_name_case(client: httpx.AsyncClient, reader, make_key) -> None:
    user = reader
    created = await make_key(user.user_id)
    h = signed_headers(created)
    headers = {"apikey": h["APIKey"], "SIGNATURE": h["Signature"].upper(), "userid": h["UserId"], "NONCE": h["Nonce"]}
    assert_authenticated(await client.get("/AP/AuthenticateUser", headers=headers), user.user_id, user.username)


@pytest.mark.parametrize("as_number", [True, False], ids=["number", "string"])
@pytest.mark.parametrize("endpoint", ["AuthenticateUser", "Authenticate"])
async def test_json_body_with_user_id_as_string_or_number(client: httpx.AsyncClient, reader, make_key, as_number: bool, endpoint: str) -> None:
    user = reader
    created = await make_key(user.user_id)
    h = signed_headers(created)
    body = {"APIKey": h["APIKey"], "Signature": h["Signature"], "UserId": user.user_id if as_number else str(user.user_id), "Nonce": h["Nonce"]}
    assert_authenticated(await client.post(f"/AP/{endpoint}", json=body), user.user_id, user.username)


async def test_json_body_keys_ignore_case(client: httpx.AsyncClient, reader, make_key) -> None:
    user = reader
    created = await make_key(user.user_id)
    h = signed_headers(created)
    body = {"apikey": h["APIKey"], "SIGNATURE": h["Signature"], "userId": user.user_id, "nonce": int(h["Nonce"])}
    assert_authenticated(await client.post("/AP/AuthenticateUser", json=body), user.user_id, user.username)


@pytest.mark.parametrize("endpoint", ["AuthenticateUser", "WebAuthenticateUser", "Authenticate"])
async def test_username_and_password_json(client: httpx.AsyncClient, reader, endpoint: str) -> None:
    user = reader
    r = await client.post(f"/AP/{endpoint}", json={"UserName": user.username, "Password": user.password})
    assert_authenticated(r, user.user_id, user.username)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_basic_authorization_on_authenticate(client: httpx.AsyncClient, reader, method: str) -> None:
    user = reader
    basic = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
    r = await client.request(method, "/AP/Authenticate", headers={"Authorization": f"Basic {basic}"})
    assert_authenticated(r, user.user_id, user.username)
    wrong = base64.b64encode(f"{user.username}:{user.password}x".encode()).decode()
    body = assert_apex_error(await client.request(method, "/AP/Authenticate", headers={"Authorization": f"Basic {wrong}"}), 401)
    assert body["Authenticated"] is False and body["Locked"] is False


async def test_web_authenticate_user_resumes_by_session_token(client: httpx.AsyncClient, reader) -> None:
    user = reader
    token = await password_token(client, user.username, user.password)
    r = await client.post("/AP/WebAuthenticateUser", json={"SessionToken": token})
    assert assert_authenticated(r, user.user_id, user.username) == token
    r = await client.post("/AP/WebAuthenticateUser", json={"SessionToken": "00000000-0000-0000-0000-000000000000"})
    assert r.status_code in (400, 401) and r.json()["Authenticated"] is False


@pytest.mark.parametrize("spelling", ["aptoken", "APToken", "APTOKEN"])
async def test_token_header_spelling(client: httpx.AsyncClient, reader, make_key, spelling: str) -> None:
    user = reader
    token = await key_token(client, await make_key(user.user_id))
    r = await client.get("/AP/GetUserInfo", headers={spelling: token})
    assert r.status_code == 200 and r.json()["UserName"] == user.username


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_log_out_then_token_refused(client: httpx.AsyncClient, reader, make_key, method: str) -> None:
    user = reader
    created = await make_key(user.user_id)
    token = await key_token(client, created)
    other = await key_token(client, created)
    r = await client.request(method, "/AP/LogOut", headers={"aptoken": token})
    assert r.status_code == 200 and r.json() == {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
    refused = assert_apex_error(await client.get("/AP/GetUserInfo", headers={"aptoken": token}), 401)
    assert refused["errorcode"] == 20
    assert_apex_error(await client.post("/AP/LogOut", headers={"aptoken": token}), 401)
    # Only that session ended.
    assert (await client.get("/AP/GetUserInfo", headers={"aptoken": other})).status_code == 200


async def test_failure_reply_is_identical_for_key_user_and_signature(client: httpx.AsyncClient, reader, bystander, make_key) -> None:
    user, other = reader, bystander
    created = await make_key(user.user_id)
    good = signed_headers(created)
    cases = {
        "unknown key": {**good, "APIKey": "0123456789abcdef0123456789abcdef"},
        "unknown user": signed_headers(created, user_id=2_000_000_000),
        "another user": signed_headers(created, user_id=other.user_id),
        "wrong signature": {**good, "Signature": ("0" if good["Signature"][0] != "0" else "1") + good["Signature"][1:]},
    }
    replies = {}
    for name, headers in cases.items():
        r = await client.post("/AP/AuthenticateUser", headers=headers)
        assert_apex_error(r, 401)
        replies[name] = (r.status_code, r.content, r.headers.get("content-type"))
    assert len(set(replies.values())) == 1, replies
    body = assert_apex_error(await client.post("/AP/AuthenticateUser", headers=cases["unknown key"]))
    assert body["Authenticated"] is False and body["Locked"] is False
    # The same holds for the JSON form.
    json_replies = set()
    for headers in cases.values():
        r = await client.post("/AP/AuthenticateUser", json={**headers, "UserId": int(headers["UserId"])})
        json_replies.add((r.status_code, r.content))
    assert json_replies == {replies["unknown key"][:2]}


async def test_locked_user_told_only_with_right_credentials(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    await kg.users.set_locked(OPERATOR, user.user_id, True)
    try:
        body = assert_apex_error(await client.post("/AP/AuthenticateUser", headers=signed_headers(created)))
        assert body["Locked"] is True
        wrong = {**signed_headers(created), "Signature": "0" * 64}
        body = assert_apex_error(await client.post("/AP/AuthenticateUser", headers=wrong))
        assert body["Locked"] is False
        body = assert_apex_error(await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password}))
        assert body["Locked"] is True
        body = assert_apex_error(await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": "wrong password!"}))
        assert body["Locked"] is False
    finally:
        await kg.users.set_locked(OPERATOR, user.user_id, False)


async def test_client_address_is_the_socket_peer(api_app, reader, make_key) -> None:
    """ASGITransport's default peer is 127.0.0.1; an allowlist is checked against it."""
    user = reader
    allowed = await make_key(user.user_id, ips=["127.0.0.1"])
    elsewhere = await make_key(user.user_id, ips=["10.0.0.1"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="http://127.0.0.1") as c:
        assert (await c.post("/AP/AuthenticateUser", headers=signed_headers(allowed))).status_code == 200
        assert_apex_error(await c.post("/AP/AuthenticateUser", headers=signed_headers(elsewhere)), 401)
        # X-Forwarded-For from an untrusted peer is ignored.
        spoofed = await c.post("/AP/AuthenticateUser", headers={**signed_headers(elsewhere), "X-Forwarded-For": "10.0.0.1"})
        assert_apex_error(spoofed, 401)


async def test_session_is_bound_to_the_client_address(api_app, reader, make_key) -> None:
    user = reader
    created = await make_key(user.user_id)
    a = httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app, client=("198.51.100.1", 1)), base_url="http://127.0.0.1")
    b = httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app, client=("198.51.100.2", 1)), base_url="http://127.0.0.1")
    async with a, b:
        token = await key_token(a, created)
        assert (await a.get("/AP/GetUserInfo", headers={"aptoken": token})).status_code == 200
        assert_apex_error(await b.get("/AP/GetUserInfo", headers={"aptoken": token}), 401)


async def test_ping(client: httpx.AsyncClient) -> None:
    for method, path in (("GET", "/AP/Ping"), ("POST", "/ap/ping")):
        r = await client.request(method, path)
        assert r.status_code == 200 and r.json() == {"msg": "PONG"}


def test_create_app_without_keygate_is_possible(settings) -> None:
    assert create_app(settings) is not None


async def test_web_authenticate_user_by_get(client: httpx.AsyncClient, reader) -> None:
    r = await client.request("GET", "/AP/WebAuthenticateUser", json={"UserName": reader.username, "Password": reader.password})
    token = assert_authenticated(r, reader.user_id, reader.username)
    r = await client.request("GET", "/AP/WebAuthenticateUser", json={"SessionToken": token})
    assert assert_authenticated(r, reader.user_id, reader.username) == token
