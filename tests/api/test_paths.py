"""Every APEX path form reaches its endpoint, over HTTP and WebSocket, without a redirect (a real server)."""

from __future__ import annotations

import httpx
import pytest
from live_helpers import ask, body, frame, password_token, ws_url
from websockets.asyncio.client import connect

from keygate.domain.signature import compute_signature

HTTP_FORMS = ["/AP/GetUserInfo", "/ap/getuserinfo", "/AP/GetUserInfo/", "/ap/getuserinfo/", "/AP//GetUserInfo",
              "//ap//GETUSERINFO//", "/Ap/gEtUsErInFo", "/aP/GetUserInfo/"]
WS_FORMS = ["/WSGateway", "/wsgateway", "/wsgateway/", "/WSGATEWAY/", "//WSGateway", "/ws", "/WS", "/ws/", "/Ws//"]


async def test_every_http_path_form_answers_without_redirect(server, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    async with httpx.AsyncClient(base_url=server.base_url, follow_redirects=False) as client:
        token = await password_token(client, user.username, user.password)
        for path in HTTP_FORMS:
            for method in ("GET", "POST"):
                # A full URL: httpx reads a relative "//ap/..." as a host name.
                r = await client.request(method, server.base_url + path, headers={"aptoken": token})
                assert r.status_code == 200, (method, path, r.status_code, r.text)
                assert r.json()["UserId"] == user.user_id, (method, path)
        for path in ("/ap/ping/", "/AP//Ping", "/AP/Ping/", "//ap//ping//"):
            r = await client.get(server.base_url + path)
            assert (r.status_code, r.json()) == (200, {"msg": "PONG"}), path


@pytest.mark.parametrize("path", ["/ap/nosuchcall/", "/AP//NoSuchCall", "/AP/NoSuchCall/", "//ap/nosuchcall"])
async def test_an_unknown_endpoint_in_any_form_answers_404_not_a_redirect(server, path: str) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=server.base_url, follow_redirects=False) as client:
        r = await client.post(server.base_url + path)
    assert r.status_code == 404, r.status_code
    assert r.json()["errorcode"] == 104 and "nosuchcall" in r.json()["errormsg"].lower()


async def test_every_websocket_path_form_accepts_the_upgrade(server) -> None:  # type: ignore[no-untyped-def]
    for path in WS_FORMS:
        async with connect(ws_url(server, path)) as ws:
            reply = await ask(ws, frame(2, "Ping"))
            assert reply["m"] == 1 and body(reply) == {"msg": "PONG"}, path


async def test_a_key_signs_in_over_wsgateway_slash(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    nonce = "1700000000123"
    auth = {"APIKey": created.key.api_key, "UserId": str(user.user_id), "Nonce": nonce,
            "Signature": compute_signature(created.secret, nonce, user.user_id, created.key.api_key)}
    async with connect(ws_url(server, "/wsgateway/")) as ws:
        signed_in = body(await ask(ws, frame(2, "AuthenticateUser", auth)))
        assert signed_in["Authenticated"] is True
        assert body(await ask(ws, frame(4, "GetUserPermissions"))) == ["Trading"]
