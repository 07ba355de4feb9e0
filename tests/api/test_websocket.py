"""The APEX WebSocket gateway: frames in, the same rules and replies out, the session kept per connection."""

from __future__ import annotations

import json

from live_helpers import ask, body, frame, ws_url
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


# ----- round two: what real APEX WebSocket clients expect of every frame ----------------------

async def test_replies_echo_the_name_and_sequence_as_sent(server, make_user) -> None:  # type: ignore[no-untyped-def]
    async with connect(ws_url(server)) as ws:
        for i, name in ((1, "ping"), (3, "PING"), (5, "Ping"), ("7", "pInG")):
            reply = await ask(ws, frame(i, name))
            assert (reply["m"], reply["i"], reply["n"]) == (1, i, name)
        unknown = await ask(ws, frame(9, "getL2Snapshot"))
        assert (unknown["m"], unknown["i"], unknown["n"]) == (1, 9, "getL2Snapshot") and body(unknown)["errorcode"] == 104


async def test_refusals_of_a_request_are_m1_replies_with_the_apex_error_body(server) -> None:  # type: ignore[no-untyped-def]
    async with connect(ws_url(server)) as ws:
        not_signed_in = await ask(ws, frame(11, "getuserinfo"))
        assert (not_signed_in["m"], not_signed_in["i"], not_signed_in["n"]) == (1, 11, "getuserinfo")
        refusal = body(not_signed_in)
        assert set(refusal) == {"result", "errormsg", "errorcode", "detail"} and refusal["errorcode"] == 20
        # The text names what a WebSocket client sends: payload fields, not HTTP headers.
        assert "frame's payload" in refusal["errormsg"] and "header" not in refusal["errormsg"].lower()
        no_fields = body(await ask(ws, frame(13, "AuthenticateUser", {})))
        assert "frame's payload" in no_fields["errormsg"] and "header" not in no_fields["errormsg"].lower()
        bad_o = await ask(ws, json.dumps({"m": 0, "i": 15, "n": "Ping", "o": 7}))
        assert (bad_o["m"], bad_o["i"], bad_o["n"]) == (1, 15, "Ping") and body(bad_o)["errorcode"] == 100


async def test_subscription_frames_get_a_clear_apex_answer(server) -> None:  # type: ignore[no-untyped-def]
    async with connect(ws_url(server)) as ws:
        for m, i, name in ((2, 21, "SubscribeLevel1"), (4, 23, "UnsubscribeLevel1"), (2, 25, "GetUserInfo")):
            reply = await ask(ws, frame(i, name, {"OMSId": 1, "InstrumentId": 1}, m=m))
            assert (reply["m"], reply["i"], reply["n"]) == (1, i, name)
            answer = body(reply)
            assert answer["result"] is False and answer["errorcode"] == 106
            assert "publishes no events" in answer["errormsg"]
        assert body(await ask(ws, frame(27, "Ping"))) == {"msg": "PONG"}  # the connection stays


async def test_error_frames_echo_what_can_be_echoed(server) -> None:  # type: ignore[no-untyped-def]
    async with connect(ws_url(server)) as ws:
        not_request = await ask(ws, json.dumps({"m": 3, "i": 31, "n": "Ping", "o": "{}"}))
        assert (not_request["m"], not_request["i"], not_request["n"]) == (5, 31, "Ping")
        assert body(not_request)["errorcode"] == 100
        no_m = await ask(ws, json.dumps({"i": 33, "n": "LogOut"}))
        assert (no_m["m"], no_m["i"], no_m["n"]) == (5, 33, "LogOut")
        for text in ("not json", "[1,2]", '"frame"', json.dumps({"m": 0, "i": 35, "n": "Ping", "o": "x" * 70000})):
            unreadable = await ask(ws, text)
            assert (unreadable["m"], unreadable["i"], unreadable["n"]) == (5, 0, ""), text
            assert body(unreadable)["result"] is False
