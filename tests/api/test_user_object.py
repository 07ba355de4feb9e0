"""GetUserInfo answers APEX's full user object, over HTTP and WebSocket, as the document says (a real server)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import httpx
from live_helpers import (
    ask,
    body,
    check_against_document,
    frame,
    password_token,
    reply_schema,
    ws_url,
)
from websockets.asyncio.client import connect

from keygate.service import Keygate

# APEX's user object: every field, and the type its clients parse it as. None may be null.
APEX_USER_FIELDS: dict[str, type] = {
    "UserId": int, "UserName": str, "Email": str, "PasswordHash": str, "PendingEmailCode": str, "EmailVerified": bool,
    "AccountId": int, "DateTimeCreated": str, "AffiliateId": int, "RefererId": int, "OMSId": int, "Use2FA": bool,
    "Salt": str, "PendingCodeTime": str, "Locked": bool, "LockedTime": str, "NumberOfFailedAttempt": int,
    "MarginBorrowerEnabled": bool, "MarginAcquisitionHalt": bool, "OperatorId": int,
}
ZERO_TIME = "0001-01-01T00:00:00Z"


def check_user_object(user: dict[str, object]) -> None:
    assert set(user) == set(APEX_USER_FIELDS), set(user) ^ set(APEX_USER_FIELDS)
    for name, kind in APEX_USER_FIELDS.items():
        value = user[name]
        assert value is not None, name
        # bool is an int in Python: an int field must not be a bool, nor a bool field an int.
        assert type(value) is kind, (name, type(value).__name__, kind.__name__)
    for name in ("DateTimeCreated", "PendingCodeTime", "LockedTime"):
        datetime.strptime(str(user[name]), "%Y-%m-%dT%H:%M:%SZ")  # APEX's form: UTC, whole seconds


def apex_time(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_get_user_info_is_the_full_apex_user_over_http_and_websocket(server, make_user, kg: Keygate) -> None:  # type: ignore[no-untyped-def]
    made = await make_user(email="full@example.com")
    stored = await kg.users.require(made.user_id)
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        doc = (await client.get("/openapi.json")).json()
        signed_in = (await client.post("/AP/AuthenticateUser", json={"UserName": made.username, "Password": made.password})).json()
        token = signed_in["SessionToken"]
        r = await client.post("/AP/GetUserInfo", headers={"aptoken": token})
    assert r.status_code == 200
    user = r.json()
    check_user_object(user)
    check_against_document(doc, reply_schema(doc, "/AP/GetUserInfo", 200), user)
    assert user["UserId"] == made.user_id and user["UserName"] == made.username and user["Email"] == "full@example.com"
    assert user["DateTimeCreated"] == apex_time(stored.created_at)
    assert (user["Locked"], user["LockedTime"], user["NumberOfFailedAttempt"]) == (False, ZERO_TIME, 0)
    assert (user["PasswordHash"], user["Salt"], user["PendingEmailCode"], user["PendingCodeTime"]) == ("", "", "", ZERO_TIME)
    assert stored.password_hash not in r.text and "argon2" not in r.text
    # AuthenticateUser carries the same object.
    assert signed_in["User"] == user

    async with connect(ws_url(server, "/wsgateway")) as ws:
        reply = await ask(ws, frame(2, "WebAuthenticateUser", {"UserName": made.username, "Password": made.password}))
        assert body(reply)["User"] == user
        over_ws = body(await ask(ws, frame(4, "GetUserInfo")))
    check_user_object(over_ws)
    assert over_ws == user


async def test_the_user_object_shows_a_lock_and_when_a_lock_after_failures_ends(server, make_user, kg: Keygate) -> None:  # type: ignore[no-untyped-def]
    admin, target, other = await make_user(admin=True), await make_user(), await make_user()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        headers = {"aptoken": await password_token(client, admin.username, admin.password)}
        assert (await client.post("/AP/LockUser", headers=headers, json={"UserId": target.user_id})).status_code == 200
        locked = (await client.post("/AP/GetUserInfo", headers=headers, json={"UserId": target.user_id})).json()
        check_user_object(locked)
        assert (locked["Locked"], locked["LockedTime"]) == (True, ZERO_TIME)  # an administrator's lock has no end

        # A timed lock (what keygate wrote after failures before attacks stopped locking users; kept on upgrade).
        until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=600)
        async with kg.units.begin() as unit:
            await kg.users._repo.update(other.user_id, unit.conn, locked=True, locked_until=until)
            unit.changed("user", other.user_id)
        for _ in range(40):  # the server may serve the user from its cache for KEYGATE_CACHE_TTL_SECONDS
            seen = (await client.post("/AP/GetUserInfo", headers=headers, json={"UserId": other.user_id})).json()
            if seen["Locked"]:
                break
            await asyncio.sleep(0.1)
        check_user_object(seen)
        assert (seen["Locked"], seen["LockedTime"]) == (True, apex_time(until))


async def test_web_authenticate_user_answers_a_top_level_user_id_string(server, make_user) -> None:  # type: ignore[no-untyped-def]
    made = await make_user()
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        r = await client.post("/AP/WebAuthenticateUser", json={"UserName": made.username, "Password": made.password})
        assert r.status_code == 200
        signed_in = r.json()
        assert signed_in["UserId"] == str(made.user_id) and signed_in["Authenticated"] is True
        resumed = (await client.post("/AP/WebAuthenticateUser", json={"SessionToken": signed_in["SessionToken"]})).json()
        assert resumed["UserId"] == str(made.user_id)
        doc = (await client.get("/openapi.json")).json()
    check_against_document(doc, reply_schema(doc, "/AP/WebAuthenticateUser", 200), signed_in)
    check_user_object(signed_in["User"])
