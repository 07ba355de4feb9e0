"""The Python SDK against a real server process: ``keygate.Client`` and ``keygate.AsyncClient``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from e2e_support import TEST_VECTOR as V
from e2e_support import Server, password_session, start_server, stop_server

import keygate
from keygate.config import Settings


def test_the_package_exports_the_sdk_and_the_vector_passes_through_it() -> None:
    assert keygate.compute_signature(V["secret"], V["nonce"], V["user_id"], V["api_key"]) == V["signature"]
    with keygate.Client("http://127.0.0.1:9", V["user_id"], V["api_key"], V["secret"]) as client:
        assert client.signed_headers(V["nonce"]) == {
            "APIKey": V["api_key"], "Signature": V["signature"], "UserId": V["user_id"], "Nonce": V["nonce"],
        }
    assert keygate.AsyncClient("http://127.0.0.1:9", int(V["user_id"]), V["api_key"], V["secret"]).signed_headers(V["nonce"])["Signature"] == V["signature"]


async def test_sync_client_flow(server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(email="trader@example.com")
    created = await make_key(user.user_id, ["Trading", "Deposit"], label="sdk")
    with keygate.Client(server.base_url, user.user_id, created.key.api_key, created.secret) as client:
        assert client.ping() == {"msg": "PONG"}
        assert client.session_token is None

        info = client.call("GetUserInfo")  # authenticates by itself on first use
        assert client.session_token is not None
        assert info["UserId"] == user.user_id
        assert info["UserName"] == user.username
        assert info["Email"] == "trader@example.com"
        token = client.session_token

        assert client.call("GetUserPermissions") == ["Trading", "Deposit"]
        keys = client.call("GetUserAPIKeys")
        assert [k["APIKey"] for k in keys] == [created.key.api_key]
        assert created.secret not in str(keys)
        assert client.call("GetUserAccounts") == [info["AccountId"]]

        signed = client.call("GetUserInfo", signed=True)  # per-request signature, no session used
        assert signed["UserName"] == user.username
        assert client.call("GetUserPermissions", signed=True) == ["Trading", "Deposit"]
        assert client.session_token == token

        # A key session may not manage keys: a clear refusal, and no pointless re-authentication.
        with pytest.raises(keygate.KeygateAPIError) as refused:
            client.call("AddUserAPIKey", {"Permissions": ["Withdraw"]})
        assert refused.value.errorcode == 20
        assert refused.value.status == 403
        assert client.session_token == token

        assert client.logout() == {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
        assert client.session_token is None
        old = httpx.post(f"{server.base_url}/AP/GetUserInfo", headers={"aptoken": token})
        assert old.status_code == 401
        assert old.json()["errorcode"] == 20

        assert client.call("GetUserInfo")["UserId"] == user.user_id  # signs in again on demand
        assert client.session_token not in (None, token)
    assert created.secret not in repr(client)


async def test_async_client_flow(server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Withdraw"])
    async with keygate.AsyncClient(server.base_url, str(user.user_id), created.key.api_key, created.secret) as client:
        assert await client.ping() == {"msg": "PONG"}
        auth = await client.authenticate()
        assert auth["Authenticated"] is True
        assert auth["User"]["UserId"] == user.user_id
        token = client.session_token
        assert token == auth["SessionToken"]

        assert (await client.call("GetUserInfo"))["UserName"] == user.username
        assert await client.call("GetUserPermissions") == ["Withdraw"]
        assert [k["APIKey"] for k in await client.call("GetUserAPIKeys")] == [created.key.api_key]
        assert (await client.call("GetUserInfo", signed=True))["UserId"] == user.user_id
        assert client.session_token == token

        await client.logout()
        assert httpx.post(f"{server.base_url}/AP/GetUserInfo", headers={"aptoken": token}).status_code == 401
        assert (await client.call("GetUserPermissions")) == ["Withdraw"]
        assert client.session_token not in (None, token)
    assert created.secret not in repr(client)


async def test_wrong_secret_is_refused_with_the_apex_failure(server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    with keygate.Client(server.base_url, user.user_id, created.key.api_key, "0" * 64) as client:
        with pytest.raises(keygate.KeygateAPIError) as failed:
            client.call("GetUserInfo")
        assert failed.value.status == 401
        assert failed.value.body["Authenticated"] is False
        assert failed.value.errormsg == "Invalid credentials"
        assert client.session_token is None


async def test_deleted_key_stops_the_client_without_a_retry_loop(server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    api_key = created.key.api_key
    async with keygate.AsyncClient(server.base_url, user.user_id, api_key, created.secret) as client:
        await client.authenticate()
        token = password_session(server.base_url, user.username, user.password)
        removed = httpx.post(f"{server.base_url}/AP/RemoveUserAPIKey", headers={"aptoken": token}, json={"UserId": user.user_id, "APIKey": api_key})
        assert removed.json()["result"] is True
        with pytest.raises(keygate.KeygateAPIError) as failed:
            await client.call("GetUserInfo")
        assert failed.value.body["Authenticated"] is False  # the one re-authentication was refused


@pytest.fixture
def short_session_server(settings: Settings, kg) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A second server on the same database whose sessions expire after 2 idle seconds."""
    srv = start_server(settings, extra_env={"KEYGATE_SESSION_IDLE_SECONDS": "2"})
    yield srv
    stop_server(srv)


async def test_clients_reauthenticate_by_themselves_after_the_session_expired(short_session_server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    base = short_session_server.base_url
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    with keygate.Client(base, user.user_id, created.key.api_key, created.secret) as sync_client:
        async with keygate.AsyncClient(base, user.user_id, created.key.api_key, created.secret) as async_client:
            sync_client.authenticate()
            await async_client.authenticate()
            old_tokens = (sync_client.session_token, async_client.session_token)
            assert sync_client.call("GetUserInfo")["UserId"] == user.user_id
            assert (await async_client.call("GetUserInfo"))["UserId"] == user.user_id

            time.sleep(2.6)
            for old in old_tokens:  # the server really did expire both sessions
                expired = httpx.post(f"{base}/AP/GetUserInfo", headers={"aptoken": old or ""})
                assert expired.status_code == 401
                assert expired.json()["errorcode"] == 20

            assert sync_client.call("GetUserInfo")["UserName"] == user.username
            assert (await async_client.call("GetUserPermissions")) == ["Trading"]
            assert sync_client.session_token not in (None, *old_tokens)
            assert async_client.session_token not in (None, *old_tokens)
