"""The ccxt library's ``ndax`` exchange, unmodified, pointed at a real keygate server by its URLs.

ccxt signs each private request with the four headers when it has no session, and after
``sign_in()`` (HTTP Basic on ``Authenticate``, then ``Authenticate2FA`` with a TOTP code) sends
``APToken`` instead.
"""

from __future__ import annotations

from typing import Any

import pyotp
import pytest
from e2e_support import Server, previous_totp_code

from keygate.service import Keygate
from keygate.service.principal import OPERATOR

ccxt = pytest.importorskip("ccxt")


def ndax(server: Server, user_id: int, api_key: str, secret: str, login: str, password: str) -> Any:
    exchange = ccxt.ndax({
        "apiKey": api_key,
        "secret": secret,
        "uid": str(user_id),
        "login": login,
        "password": password,
        "enableRateLimit": False,
        "timeout": 10000,
    })
    exchange.urls["api"] = {"public": f"{server.base_url}/AP", "private": f"{server.base_url}/AP"}
    return exchange


def test_ccxt_knows_the_endpoints_we_call() -> None:
    """Guard against a ccxt upgrade silently dropping what these tests rely on."""
    api = ccxt.ndax().api
    assert "GetUserAccounts" in api["private"]["get"]
    assert {"Authenticate", "Authenticate2FA", "AuthenticateUser", "Ping"} <= set(api["public"]["get"])


async def test_private_calls_with_per_request_signatures(server: Server, kg: Keygate, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    account_id = (await kg.users.require(user.user_id)).account_id
    exchange = ndax(server, user.user_id, created.key.api_key, created.secret, user.username, user.password)

    assert exchange.publicGetPing() == {"msg": "PONG"}
    assert exchange.privateGetGetUserAccounts() == [account_id]
    accounts = exchange.fetch_accounts()  # sends omsId, UserId and UserName as query parameters
    assert [a["id"] for a in accounts] == [str(account_id)]
    info = exchange.request("GetUserInfo", ["private"], "GET")
    assert info["UserName"] == user.username
    assert exchange.request("GetUserPermissions", ["private"], "GET") == ["Trading"]
    assert exchange.options.get("sessionToken") is None  # no session was involved: every call was signed
    assert exchange.last_request_headers["APIKey"] == created.key.api_key
    assert len(exchange.last_request_headers["Signature"]) == 64


async def test_a_wrong_secret_is_refused_to_ccxt(server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    exchange = ndax(server, user.user_id, created.key.api_key, "f" * 64, user.username, user.password)
    with pytest.raises(ccxt.ExchangeError) as refused:
        exchange.privateGetGetUserAccounts()
    assert "Invalid credentials" in str(refused.value)
    assert created.secret not in str(refused.value)


async def test_sign_in_without_two_factor(server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    exchange = ndax(server, user.user_id, created.key.api_key, created.secret, user.username, user.password)
    reply = exchange.sign_in()
    assert reply["Authenticated"] is True
    token = exchange.options["sessionToken"]
    assert token == reply["SessionToken"]
    assert exchange.request("GetUserInfo", ["private"], "GET")["UserId"] == user.user_id
    assert exchange.last_request_headers["APToken"] == token and "Signature" not in exchange.last_request_headers


async def test_sign_in_with_totp_then_calls_with_the_session(server: Server, kg: Keygate, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    totp_secret, _ = await kg.users.begin_totp(OPERATOR, user.user_id)
    await kg.users.confirm_totp(OPERATOR, user.user_id, previous_totp_code(totp_secret))
    account_id = (await kg.users.require(user.user_id)).account_id

    exchange = ndax(server, user.user_id, created.key.api_key, created.secret, user.username, user.password)
    with pytest.raises(ccxt.AuthenticationError):
        exchange.sign_in()  # the server asked for the second factor and ccxt has none
    assert exchange.options.get("sessionToken") is None

    exchange.twofa = totp_secret
    reply = exchange.sign_in()
    assert reply["Authenticated"] is True
    assert reply["UserId"] == user.user_id
    token = exchange.options["sessionToken"]
    assert token == reply["SessionToken"]

    assert exchange.privateGetGetUserAccounts() == [account_id]
    assert exchange.last_request_headers["APToken"] == token and "Signature" not in exchange.last_request_headers
    assert [a["id"] for a in exchange.fetch_accounts()] == [str(account_id)]
    info = exchange.request("GetUserInfo", ["private"], "GET")
    assert info["Use2FA"] is True
    # A password session (with its second factor) carries the user's full rights.
    assert exchange.request("GetUserPermissions", ["private"], "GET") == ["Trading", "Withdraw", "Deposit"]


async def test_sign_in_with_a_wrong_totp_secret_is_refused(server: Server, kg: Keygate, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    totp_secret, _ = await kg.users.begin_totp(OPERATOR, user.user_id)
    await kg.users.confirm_totp(OPERATOR, user.user_id, previous_totp_code(totp_secret))
    exchange = ndax(server, user.user_id, created.key.api_key, created.secret, user.username, user.password)
    exchange.twofa = pyotp.random_base32()
    with pytest.raises(ccxt.ExchangeError):
        exchange.sign_in()
    assert exchange.options.get("sessionToken") is None


async def test_ccxt_async_sixteen_concurrent_private_calls_on_a_default_mode_key(server: Server, kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    """ccxt's async client signs each private call with a millisecond nonce; sixteen in flight at once
    arrive in any order (and two in one millisecond would be one header set: ccxt's nonce is made
    strictly increasing here, as its docs advise for concurrent use). Every call is answered."""
    import asyncio

    import ccxt.async_support as accxt

    from keygate.domain.iprules import IpAllowlist
    from keygate.domain.replay import ReplayMode

    user = await make_user()
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.WINDOW)
    account_id = (await kg.users.require(user.user_id)).account_id
    exchange = accxt.ndax({"apiKey": created.key.api_key, "secret": created.secret, "uid": str(user.user_id),
                           "login": user.username, "password": user.password, "enableRateLimit": False, "timeout": 10000})
    exchange.urls["api"] = {"public": f"{server.base_url}/AP", "private": f"{server.base_url}/AP"}
    last = [0]

    def nonce() -> int:
        last[0] = max(exchange.milliseconds(), last[0] + 1)
        return last[0]

    exchange.nonce = nonce
    try:
        for _ in range(3):
            answers = await asyncio.gather(*(exchange.privateGetGetUserAccounts() for _ in range(16)))
            assert answers == [[account_id]] * 16
    finally:
        await exchange.close()
