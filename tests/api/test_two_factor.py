"""Two-factor sign-in over the wire: enrolment, Pending2FaToken, and both Authenticate2FA forms."""

from __future__ import annotations

import time

import httpx
import pyotp
import pytest
from api_helpers import assert_apex_error, password_token


async def _enrol(client: httpx.AsyncClient, username: str, password: str) -> pyotp.TOTP:
    pw = {"aptoken": await password_token(client, username, password)}
    r = await client.post("/AP/EnableGoogle2FA", headers=pw)
    assert r.status_code == 200 and r.headers.get("cache-control") == "no-store"
    totp = pyotp.TOTP(r.json()["ManualCode"])
    assert r.json()["ProvisioningUri"].startswith("otpauth://totp/")
    assert_apex_error(await client.post("/AP/ConfirmGoogle2FA", headers=pw, json={"Code": "abc"}))
    r = await client.post("/AP/ConfirmGoogle2FA", headers=pw, json={"Code": totp.now()})
    assert r.status_code == 200 and r.json()["result"] is True
    return totp


async def _pending(client: httpx.AsyncClient, username: str, password: str) -> str:
    r = await client.post("/AP/AuthenticateUser", json={"UserName": username, "Password": password})
    assert r.status_code == 200
    body = r.json()
    assert body["Authenticated"] is True and body["Requires2FA"] is True and body["AuthType"] == "Google"
    assert "SessionToken" not in body
    return str(body["Pending2FaToken"])


def _next_code(totp: pyotp.TOTP) -> str:
    """A code from the next time step: inside the standard window, and never the one used to enrol."""
    return totp.at(time.time() + 30)


@pytest.mark.parametrize("form", ["header+query", "json", "json-token-in-body"])
async def test_password_then_code(client: httpx.AsyncClient, make_user, form: str) -> None:
    user = await make_user()
    totp = await _enrol(client, user.username, user.password)
    pending = await _pending(client, user.username, user.password)
    # The pending token is not a session.
    assert_apex_error(await client.get("/AP/GetUserInfo", headers={"aptoken": pending}), 401)
    code = _next_code(totp)
    if form == "header+query":
        r = await client.get(f"/AP/Authenticate2FA?Code={code}", headers={"Pending2FaToken": pending})
    elif form == "json":
        r = await client.post("/AP/Authenticate2FA", headers={"Pending2FaToken": pending}, json={"Code": code})
    else:
        r = await client.post("/AP/Authenticate2FA", json={"Code": code, "Pending2FaToken": pending})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["Authenticated"] is True and body["UserId"] == user.user_id
    info = await client.get("/AP/GetUserInfo", headers={"aptoken": body["SessionToken"]})
    assert info.status_code == 200 and info.json()["Use2FA"] is True
    # Used once, the pending token is spent.
    again = await client.get(f"/AP/Authenticate2FA?Code={code}", headers={"Pending2FaToken": pending})
    assert_apex_error(again)
    assert again.json()["Authenticated"] is False


async def test_wrong_or_missing_code_and_token(client: httpx.AsyncClient, make_user) -> None:
    user = await make_user()
    totp = await _enrol(client, user.username, user.password)
    pending = await _pending(client, user.username, user.password)
    wrong = "%06d" % ((int(totp.now()) + 500000) % 1000000)
    cases = [
        ({"Pending2FaToken": pending}, {"Code": wrong}),
        ({"Pending2FaToken": pending}, {"Code": ""}),
        ({"Pending2FaToken": pending}, {}),
        ({"Pending2FaToken": pending}, {"Code": ["123456"]}),
        ({}, {"Code": _next_code(totp)}),
        ({"Pending2FaToken": "00000000-0000-0000-0000-000000000000"}, {"Code": _next_code(totp)}),
    ]
    for headers, payload in cases:
        r = await client.post("/AP/Authenticate2FA", headers=headers, json=payload)
        body = assert_apex_error(r)
        assert body["Authenticated"] is False, (headers, payload)
    # None of that spent the pending token.
    r = await client.post("/AP/Authenticate2FA", headers={"Pending2FaToken": pending}, json={"Code": _next_code(totp)})
    assert r.status_code == 200 and r.json()["Authenticated"] is True


async def test_basic_login_of_a_2fa_user_is_pending_too(client: httpx.AsyncClient, make_user) -> None:
    import base64

    user = await make_user()
    await _enrol(client, user.username, user.password)
    basic = base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
    r = await client.get("/AP/Authenticate", headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200 and r.json()["Requires2FA"] is True and r.json()["Pending2FaToken"]
