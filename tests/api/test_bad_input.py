"""Bad input: every case answers a 4xx with an APEX-shaped body, never a 500, and changes nothing."""

from __future__ import annotations

import base64

import httpx
import pytest
from api_helpers import assert_apex_error, is_apex_error, password_token, signed_headers, snapshot

from keygate.service import Keygate

SIG = "ab" * 32


def _auth_cases(api_key: str, user_id: int) -> list[tuple[str, dict[str, str | bytes], bytes | None]]:
    """(name, headers, body) of malformed or refused sign-ins; ``api_key``/``user_id`` are real."""
    full = {"APIKey": api_key, "Signature": SIG, "UserId": str(user_id), "Nonce": "1"}
    cases: list[tuple[str, dict[str, str | bytes], bytes | None]] = [
        ("nothing at all", {}, None),
        ("missing APIKey", {k: v for k, v in full.items() if k != "APIKey"}, None),
        ("missing Signature", {k: v for k, v in full.items() if k != "Signature"}, None),
        ("missing UserId", {k: v for k, v in full.items() if k != "UserId"}, None),
        ("missing Nonce", {k: v for k, v in full.items() if k != "Nonce"}, None),
        ("empty APIKey", {**full, "APIKey": ""}, None),
        ("empty Signature", {**full, "Signature": ""}, None),
        ("empty UserId", {**full, "UserId": ""}, None),
        ("blank Nonce", {**full, "Nonce": "   "}, None),
        ("oversized APIKey", {**full, "APIKey": "a" * 5000}, None),
        ("oversized Signature", {**full, "Signature": "a" * 5000}, None),
        ("oversized Nonce", {**full, "Nonce": "1" * 5000}, None),
        ("oversized UserId", {**full, "UserId": "1" * 5000}, None),
        ("non-numeric UserId", {**full, "UserId": "forty-two"}, None),
        ("negative UserId", {**full, "UserId": "-5"}, None),
        ("zero UserId", {**full, "UserId": "0"}, None),
        ("fractional UserId", {**full, "UserId": "4.2"}, None),
        ("huge UserId", {**full, "UserId": "9" * 19}, None),
        ("out-of-range UserId", {**full, "UserId": str(2**31)}, None),
        ("unicode digit UserId", {**full, "UserId": "\u00b2".encode()}, None),
        ("unknown UserId", {**full, "UserId": "2000000000"}, None),
        ("unknown key", {**full, "APIKey": "f" * 32}, None),
        ("key of odd shape", {**full, "APIKey": "not-a-key!"}, None),
        ("wrong signature", full, None),
        ("signature too short", {**full, "Signature": SIG[:-1]}, None),
        ("signature too long", {**full, "Signature": SIG + "a"}, None),
        ("signature not hex", {**full, "Signature": "zz" * 32}, None),
        ("latin-1 bytes in header", {**full, "Nonce": "\u00e9\u00ff".encode("latin-1")}, None),
        ("UTF-8 bytes in APIKey header", {**full, "APIKey": "\u00e9".encode() * 16}, None),
        ("control character in header", {**full, "Nonce": "1\x7f2"}, None),
        ("non-JSON body", {}, b"APIKey=x&Signature=y"),
        ("truncated JSON body", {}, b'{"APIKey": "x"'),
        ("JSON array body", {}, b'[1, 2, 3]'),
        ("JSON string body", {}, b'"hello"'),
        ("JSON null body", {}, b"null"),
        ("invalid UTF-8 body", {}, b'{"APIKey": "\xff\xfe"}'),
        ("lone surrogate in JSON", {}, b'{"UserName": "\\ud800", "Password": "\\udfff\\ud800xxxxxxxx"}'),
        ("NUL in JSON username", {}, b'{"UserName": "a\\u0000b", "Password": "whatever12345"}'),
        ("NaN UserId in JSON", {}, b'{"APIKey": "x", "Signature": "y", "UserId": NaN, "Nonce": 1}'),
        ("object UserId in JSON", {}, b'{"APIKey": "' + api_key.encode() + b'", "Signature": "' + SIG.encode() + b'", "UserId": {"a": 1}, "Nonce": 1}'),
        ("list APIKey in JSON", {}, b'{"APIKey": ["x"], "Signature": "' + SIG.encode() + b'", "UserId": 1, "Nonce": 1}'),
        ("bool UserId in JSON", {}, b'{"APIKey": "' + api_key.encode() + b'", "Signature": "' + SIG.encode() + b'", "UserId": true, "Nonce": 1}'),
        ("float Nonce in JSON", {}, b'{"APIKey": "' + api_key.encode() + b'", "Signature": "' + SIG.encode() + b'", "UserId": 1, "Nonce": 1.5}'),
        ("huge int UserId in JSON", {}, b'{"APIKey": "' + api_key.encode() + b'", "Signature": "' + SIG.encode() + b'", "UserId": ' + b"9" * 400 + b', "Nonce": 1}'),
        ("deeply nested JSON", {}, b"[" * 5000 + b"]" * 5000),
        ("password too long", {}, b'{"UserName": "someone", "Password": "' + b"x" * 1000 + b'"}'),
        ("username not a string", {}, b'{"UserName": 5, "Password": "whatever12345"}'),
        ("empty username", {}, b'{"UserName": "", "Password": "whatever12345"}'),
        ("unknown user by name", {}, b'{"UserName": "nobody-here-at-all", "Password": "whatever12345"}'),
        ("basic not base64", {"Authorization": "Basic !!!"}, None),
        ("basic without colon", {"Authorization": "Basic " + base64.b64encode(b"justuser").decode()}, None),
        ("basic with invalid UTF-8", {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()}, None),
        ("bearer scheme", {"Authorization": "Bearer abc"}, None),
    ]
    return cases


@pytest.mark.parametrize("endpoint", ["AuthenticateUser", "Authenticate", "WebAuthenticateUser"])
async def test_bad_sign_ins(client: httpx.AsyncClient, kg: Keygate, make_user, make_key, endpoint: str) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    before = await snapshot(kg)
    for name, headers, body in _auth_cases(created.key.api_key, user.user_id):
        for method in ("GET", "POST"):
            r = await client.request(method, f"/AP/{endpoint}", headers=headers, content=body)
            assert is_apex_error(r), (name, method, r.status_code, r.text)
            reply = r.json()
            assert reply["Authenticated"] is False and isinstance(reply["errormsg"], str), (name, reply)
            assert created.secret not in r.text and "Traceback" not in r.text
    assert await snapshot(kg) == before


async def test_shape_errors_explain_themselves(client: httpx.AsyncClient) -> None:
    r = await client.post("/AP/AuthenticateUser", headers={"APIKey": "a" * 32, "Signature": "ab" * 32, "UserId": "1"})
    assert "Nonce" in assert_apex_error(r, 400)["errormsg"]
    r = await client.post("/AP/AuthenticateUser", headers={"APIKey": "a" * 32, "Signature": "ab", "UserId": "1", "Nonce": "1"})
    assert "Signature" in assert_apex_error(r, 400)["errormsg"]
    r = await client.post("/AP/AuthenticateUser", headers={"APIKey": "a" * 32, "Signature": "ab" * 32, "UserId": "x", "Nonce": "1"})
    assert "UserId" in assert_apex_error(r, 400)["errormsg"]
    r = await client.post("/AP/AuthenticateUser", content=b"{not json")
    assert "JSON" in assert_apex_error(r, 400)["errormsg"]


def _key_payloads(own: int, api_key: str) -> list[tuple[str, str, bytes | dict[str, object] | None]]:
    """(endpoint, name, body) of malformed key-management requests."""
    add, upd, rem, lst = "AddUserAPIKey", "UpdateUserAPIKey", "RemoveUserAPIKey", "GetUserAPIKeys"
    return [
        (add, "unknown permission", {"Permissions": ["Trading", "Admin"]}),
        (add, "permission not a string", {"Permissions": [1]}),
        (add, "permissions a number", {"Permissions": 7}),
        (add, "invalid allowlist entry", {"IpAllowlist": ["10.0.0.0/33"]}),
        (add, "allowlist entry not a string", {"IpAllowlist": [5]}),
        (add, "allowlist a number", {"IpAllowlist": 5}),
        (add, "allowlist an object", {"IpAllowlist": {"10.0.0.1": True}}),
        (add, "too many allowlist entries", {"IpAllowlist": [f"10.0.{i // 200}.{i % 200}" for i in range(500)]}),
        (add, "label too long", {"Label": "x" * 500}),
        (add, "label with control characters", {"Label": "a\nb"}),
        (add, "label not a string", {"Label": 5}),
        (add, "label with lone surrogate", b'{"Label": "\\ud800"}'),
        (add, "label with NUL", b'{"Label": "a\\u0000b"}'),
        (add, "non-numeric UserId", {"UserId": "me"}),
        (add, "negative UserId", {"UserId": -1}),
        (add, "UserId a list", {"UserId": [own]}),
        (add, "UserId out of range", {"UserId": 2**40}),
        (add, "unknown UserId", {"UserId": 2_000_000_000}),
        (add, "non-JSON body", b"Permissions=Trading"),
        (add, "JSON array body", b'["Trading"]'),
        (lst, "non-numeric UserId", {"UserId": "me"}),
        (lst, "unknown UserId", {"UserId": 2_000_000_000}),
        (lst, "non-JSON body", b"{"),
        (upd, "missing APIKey", {"Label": "x"}),
        (upd, "empty APIKey", {"APIKey": "", "Label": "x"}),
        (upd, "APIKey a number", {"APIKey": 5, "Label": "x"}),
        (upd, "unknown APIKey", {"APIKey": "f" * 32, "Label": "x"}),
        (upd, "oversized APIKey", {"APIKey": "f" * 5000, "Label": "x"}),
        (upd, "APIKey with NUL", b'{"APIKey": "\\u0000", "Label": "x"}'),
        (upd, "APIKey with lone surrogate", b'{"APIKey": "\\udfff", "Label": "x"}'),
        (upd, "APIKey non-ASCII", {"APIKey": "\u00e9" * 32, "Label": "x"}),
        (upd, "unknown permission", {"APIKey": api_key, "Permissions": ["Root"]}),
        (upd, "invalid allowlist", {"APIKey": api_key, "IpAllowlist": ["300.1.1.1"]}),
        (upd, "label not a string", {"APIKey": api_key, "Label": ["x"]}),
        (upd, "label too long", {"APIKey": api_key, "Label": "y" * 101}),
        (upd, "other user's id", {"APIKey": api_key, "UserId": 2_000_000_000, "Label": "x"}),
        (rem, "missing APIKey", {}),
        (rem, "unknown APIKey", {"APIKey": "e" * 32}),
        (rem, "APIKey a list", {"APIKey": [api_key]}),
        (rem, "APIKey with NUL", b'{"APIKey": "\\u0000"}'),
        (rem, "bad UserId", {"APIKey": api_key, "UserId": "abc"}),
        (rem, "non-JSON body", b"APIKey=" + api_key.encode()),
    ]


async def test_bad_key_management_requests(client: httpx.AsyncClient, kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], ["198.18.0.0/15"], "keep me")
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    before = await snapshot(kg)
    for endpoint, name, body in _key_payloads(user.user_id, created.key.api_key):
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = await client.post(f"/AP/{endpoint}", headers=pw, **kwargs)  # type: ignore[arg-type]
        assert is_apex_error(r), (endpoint, name, r.status_code, r.text)
        assert r.json()["errorcode"] in (20, 100, 101, 104), (endpoint, name, r.text)
    assert await snapshot(kg) == before


async def test_messages_name_the_bad_value(client: httpx.AsyncClient, make_user) -> None:
    user = await make_user()
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    r = await client.post("/AP/AddUserAPIKey", headers=pw, json={"IpAllowlist": ["10.0.0.1", "10.0.0.0/33"]})
    assert "10.0.0.0/33" in assert_apex_error(r, 400)["errormsg"]
    r = await client.post("/AP/AddUserAPIKey", headers=pw, json={"Permissions": ["Trading", "Admin"]})
    assert "Admin" in assert_apex_error(r, 400)["errormsg"]


@pytest.mark.parametrize("endpoint", ["GetUserInfo", "GetUserPermissions", "GetUserAccounts", "GetUserAPIKeys", "LogOut"])
async def test_bad_private_requests(client: httpx.AsyncClient, kg: Keygate, make_user, make_key, endpoint: str) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    before = await snapshot(kg)
    cases: list[dict[str, str | bytes]] = [
        {"aptoken": "x" * 5000},
        {"aptoken": "not-a-token"},
        {"aptoken": "\u00e9\u00ff".encode("latin-1")},
        {**signed_headers(created), "Signature": "0" * 64},
        {**signed_headers(created), "UserId": "abc"},
        {k: v for k, v in signed_headers(created).items() if k != "Nonce"},
        {"APIKey": created.key.api_key},
    ]
    for headers in cases:
        for method in ("GET", "POST"):
            r = await client.request(method, f"/AP/{endpoint}", headers=headers)
            assert_apex_error(r)
            assert r.status_code in (400, 401), (headers, r.status_code)
    assert await snapshot(kg) == before


@pytest.mark.parametrize("path", ["/AP/NoSuchEndpoint", "/ap/getuserinfox", "/AP/", "/AP", "/AP/Ping/extra", "/AP/%00", "/AP/\u00e9t\u00e9", "/api/v1/whatever"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_endpoint_is_404_apex(client: httpx.AsyncClient, path: str, method: str) -> None:
    r = await client.request(method, path)
    body = assert_apex_error(r, 404)
    assert body["errorcode"] == 104


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_other_methods_are_refused_with_apex_body(client: httpx.AsyncClient, method: str) -> None:
    r = await client.request(method, "/AP/AuthenticateUser")
    assert_apex_error(r)
    assert r.status_code == 405


@pytest.mark.parametrize("endpoint", ["AuthenticateUser", "Authenticate2FA", "AddUserAPIKey", "GetUserInfo", "Ping"])
async def test_body_over_64_kib_is_413(client: httpx.AsyncClient, kg: Keygate, make_user, endpoint: str) -> None:
    user = await make_user()
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    before = await snapshot(kg)
    big = b'{"Label": "' + b"x" * (64 * 1024) + b'"}'
    r = await client.post(f"/AP/{endpoint}", headers=pw, content=big)
    body = assert_apex_error(r, 413)
    assert body["result"] is False

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(70):
            yield b" " * 1024

    r = await client.post(f"/AP/{endpoint}", headers=pw, content=chunks())
    if endpoint == "Ping":
        assert r.status_code in (200, 413)
    else:
        assert_apex_error(r, 413)
    assert await snapshot(kg) == before


async def test_body_at_the_limit_is_read(client: httpx.AsyncClient, make_user) -> None:
    user = await make_user()
    body = b'{"UserName": "' + user.username.encode() + b'", "Password": "' + user.password.encode() + b'"}'
    padded = body[:-1] + b" " * (64 * 1024 - len(body)) + b"}"
    assert len(padded) == 64 * 1024
    r = await client.post("/AP/AuthenticateUser", content=padded)
    assert r.status_code == 200, r.text


async def test_bad_content_length_header(api_app) -> None:
    """A garbled Content-Length is refused by the body limit rather than crashing."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/AP/AuthenticateUser", "raw_path": b"/AP/AuthenticateUser", "query_string": b"", "root_path": "",
        "headers": [(b"content-length", b"abc"), (b"host", b"127.0.0.1")], "client": ("198.18.9.9", 1), "server": ("127.0.0.1", 80),
    }
    await api_app(scope, receive, send)
    assert 400 <= sent[0]["status"] < 500
