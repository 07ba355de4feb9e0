"""The APEX WebSocket gateway: frames in, the same rules and replies out, the session kept per connection."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect

from keygate.domain.signature import compute_signature


def _frame(i: int, name: str, payload: object) -> str:
    return json.dumps({"m": 0, "i": i, "n": name, "o": json.dumps(payload)})


def _url(server, path: str = "/WSGateway") -> str:  # type: ignore[no-untyped-def]
    return server.base_url.replace("http://", "ws://") + path


async def _ask(ws, frame: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    await ws.send(frame)
    return json.loads(await ws.recv())


async def test_authenticate_over_websocket_then_call_without_aptoken(server, make_user, make_key):
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    nonce = "1700000000001"
    auth = {"APIKey": created.key.api_key, "UserId": user.user_id, "Nonce": nonce,
            "Signature": compute_signature(created.secret, nonce, user.user_id, created.key.api_key)}
    async with connect(_url(server)) as ws:
        reply = await _ask(ws, _frame(2, "AuthenticateUser", auth))
        assert reply["m"] == 1 and reply["i"] == 2 and reply["n"] == "AuthenticateUser"
        body = json.loads(reply["o"])
        assert body["Authenticated"] is True and body["User"]["UserId"] == user.user_id

        reply = await _ask(ws, _frame(4, "getuserpermissions", {}))
        assert reply["i"] == 4 and json.loads(reply["o"]) == ["Trading"]

        assert json.loads((await _ask(ws, _frame(6, "LogOut", {})))["o"])["result"] is True
        refused = json.loads((await _ask(ws, _frame(8, "GetUserInfo", {})))["o"])
        assert refused["result"] is False and refused["errorcode"] == 20


async def test_bad_frames_get_clear_errors_and_the_connection_stays(server):
    async with connect(_url(server, "/ws")) as ws:
        assert (await _ask(ws, "not json"))["m"] == 5
        missing_name = await _ask(ws, json.dumps({"m": 0, "i": 3}))
        assert missing_name["m"] == 1 and missing_name["i"] == 3
        assert "n must name an endpoint" in json.loads(missing_name["o"])["errormsg"]
        reply = await _ask(ws, _frame(5, "NoSuchEndpoint", {}))
        assert reply["m"] == 1 and json.loads(reply["o"])["errorcode"] == 104
        body = json.loads((await _ask(ws, _frame(7, "AuthenticateUser", {"APIKey": "x", "Signature": "zz", "UserId": "1", "Nonce": "1"})))["o"])
        assert body["Authenticated"] is False and "Signature" in body["errormsg"]
        assert json.loads((await _ask(ws, _frame(9, "Ping", {})))["o"]) == {"msg": "PONG"}
