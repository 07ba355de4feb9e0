"""The SDK in process: ``AsyncClient`` on the ASGI app over ``httpx.ASGITransport``, and its pure parts.

The real-server flows (sync and async, session expiry) are in tests/e2e/test_sdk_flow.py.
"""

from __future__ import annotations

import secrets

import httpx
import pytest

import keygate
from keygate.api import create_app
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.domain.replay import ReplayMode
from keygate.domain.sessions import hash_token
from keygate.service import Keygate
from keygate.service.principal import OPERATOR

VECTOR = ("4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c", "2277045681", "42", "8d4f1a2b3c5e6f708192a3b4c5d6e7f8")
VECTOR_SIGNATURE = "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa"


def transport(kg: Keygate) -> httpx.ASGITransport:
    """Each test its own made-up client address: sessions are bound to it."""
    return httpx.ASGITransport(app=create_app(keygate=kg), client=(f"198.19.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}", 40000))


def test_signed_headers_give_the_protocol_test_vector() -> None:
    secret, nonce, user_id, api_key = VECTOR
    for client in (keygate.Client("http://kg", user_id, api_key, secret), keygate.AsyncClient("http://kg", int(user_id), api_key, secret)):
        assert client.signed_headers(nonce) == {"APIKey": api_key, "Signature": VECTOR_SIGNATURE, "UserId": user_id, "Nonce": nonce}


def test_default_nonces_strictly_increase_even_within_one_millisecond() -> None:
    client = keygate.AsyncClient("http://kg", 1, "k" * 32, "s" * 64)
    nonces = [int(client.signed_headers()["Nonce"]) for _ in range(500)]
    assert all(b > a for a, b in zip(nonces, nonces[1:]))
    assert len(str(nonces[0])) == 13  # a millisecond timestamp, as ccxt sends


def test_the_secret_never_shows_in_repr() -> None:
    secret = secrets.token_hex(32)
    for client in (keygate.Client("http://kg", 7, "a" * 32, secret), keygate.AsyncClient("http://kg", 7, "a" * 32, secret)):
        assert secret not in repr(client)
        assert "a" * 32 in repr(client)


async def test_signed_calls_in_a_tight_loop_pass_a_key_that_wants_increasing_nonces(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    await kg.users.require(user.user_id)
    created = await kg.keys.create(OPERATOR, user.user_id, parse_permissions(["Trading"]), IpAllowlist(),
                                   replay_mode=ReplayMode.INCREASING)
    async with keygate.AsyncClient("http://127.0.0.1", user.user_id, created.key.api_key, created.secret, transport=transport(kg)) as client:
        for _ in range(25):
            assert await client.call("GetUserPermissions", signed=True) == ["Trading"]
        assert client.session_token is None

        replayed = client.signed_headers("1")  # far below the nonces already used
        reply = await client._http.post("http://127.0.0.1/AP/GetUserInfo", headers=replayed)
        assert reply.status_code == 401


async def test_refusals_raise_with_the_apex_fields_and_do_not_reauthenticate(kg: Keygate, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    async with keygate.AsyncClient("http://127.0.0.1", user.user_id, created.key.api_key, created.secret, transport=transport(kg)) as client:
        await client.authenticate()
        token = client.session_token

        with pytest.raises(keygate.KeygateAPIError) as unknown:
            await client.call("NoSuchEndpoint")
        assert (unknown.value.status, unknown.value.errorcode) == (404, 104)
        assert "NoSuchEndpoint" in (unknown.value.errormsg or "")

        with pytest.raises(keygate.KeygateAPIError) as forbidden:
            await client.call("RemoveUserAPIKey", {"APIKey": created.key.api_key})
        assert (forbidden.value.status, forbidden.value.errorcode) == (403, 20)

        with pytest.raises(keygate.KeygateAPIError) as other_user:
            await client.call("GetUserInfo", {"UserId": user.user_id + 10_000})
        assert (other_user.value.status, other_user.value.errorcode) == (403, 20)

        assert client.session_token == token  # none of these was a lost session
        assert created.secret not in str(unknown.value) + str(forbidden.value) + str(other_user.value)
        assert [k["APIKey"] for k in await client.call("GetUserAPIKeys")] == [created.key.api_key]


async def test_a_lost_session_is_replaced_once(kg: Keygate, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Deposit"])
    async with keygate.AsyncClient("http://127.0.0.1", str(user.user_id), created.key.api_key, created.secret, transport=transport(kg)) as client:
        await client.authenticate()
        first = client.session_token
        assert first is not None
        async with kg.units.begin() as unit:  # as if it had expired or been logged out elsewhere
            await kg.sessions.end(unit, hash_token(first))
        assert await client.call("GetUserPermissions") == ["Deposit"]
        assert client.session_token not in (None, first)
