"""``GetUserAPIKeyUsage`` on a real server process: hourly requests and refusals after real signed calls
and refusals, the last use's time and address, and who may read which key."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from api_helpers import assert_apex_error, key_token, password_token, signed_headers
from live_helpers import check_against_document, reply_schema


def hour_of(at: datetime) -> datetime:
    """The start of ``at``'s UTC hour (written here, not imported, so the test runs on code without usage)."""
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


async def _usage(client: httpx.AsyncClient, headers: dict[str, str], **body: object) -> httpx.Response:
    return await client.post("/AP/GetUserAPIKeyUsage", headers=headers, json=body)


async def _wait_for(client: httpx.AsyncClient, headers: dict[str, str], api_key: str, requests: int, refusals: int) -> dict[str, Any]:
    """The server writes counts once a second: poll until they arrive (or give up after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        r = await _usage(client, headers, APIKey=api_key)
        assert r.status_code == 200, r.text
        reply: dict[str, Any] = r.json()
        if (reply["Requests"], reply["Refusals"]) == (requests, refusals) or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.2)


async def test_usage_after_real_signed_calls_and_refusals(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        for _ in range(3):
            assert (await client.post("/AP/GetUserInfo", headers=signed_headers(created))).status_code == 200
        wrong = {**signed_headers(created), "Signature": "0" * 64}
        for _ in range(2):
            assert (await client.post("/AP/GetUserInfo", headers=wrong)).status_code == 401
        owner = {"aptoken": await password_token(client, user.username, user.password)}
        reply = await _wait_for(client, owner, created.key.api_key, 3, 2)
        doc = (await client.get("/openapi.json")).json()
    check_against_document(doc, reply_schema(doc, "/AP/GetUserAPIKeyUsage", 200), reply)
    assert (reply["APIKey"], reply["UserId"]) == (created.key.api_key, user.user_id)
    assert (reply["Requests"], reply["Refusals"]) == (3, 2)
    assert len(reply["Hours"]) == 168
    now = datetime.now(timezone.utc)
    assert reply["Hours"][-1]["Hour"] in {hour_of(now).isoformat(), hour_of(now - timedelta(seconds=30)).isoformat()}
    assert reply["Hours"][-1]["Requests"] == 3 and reply["Hours"][-1]["Refusals"] == 2
    assert reply["LastUsedIp"] == "127.0.0.1"
    used = datetime.fromisoformat(reply["LastUsedAt"])
    assert abs((now - used).total_seconds()) < 60


async def test_the_counts_of_every_process_add_up(server, kg, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    """The server process and this one (the test's own service, on the same database) count the same key."""
    user = await make_user()
    created = await make_key(user.user_id)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        for _ in range(2):
            assert (await client.post("/AP/GetUserInfo", headers=signed_headers(created))).status_code == 200
        owner = {"aptoken": await password_token(client, user.username, user.password)}
        assert (await _wait_for(client, owner, created.key.api_key, 2, 0))["Requests"] == 2
        for _ in range(3):
            kg.keys.mark_used(created.key.api_key, "192.0.2.9")
        kg.keys.note_refusal(created.key.api_key)
        await kg.keys.flush()
        reply = await _wait_for(client, owner, created.key.api_key, 5, 1)
    assert (reply["Requests"], reply["Refusals"]) == (5, 1) and reply["LastUsedIp"] == "192.0.2.9"


async def test_hours_and_bad_input(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        owner = {"aptoken": await password_token(client, user.username, user.password)}
        r = await _usage(client, owner, APIKey=created.key.api_key, Hours="24")
        assert r.status_code == 200 and len(r.json()["Hours"]) == 24
        r = await client.get("/AP/GetUserAPIKeyUsage", params={"APIKey": created.key.api_key, "Hours": "6"}, headers=owner)
        assert r.status_code == 200 and len(r.json()["Hours"]) == 6
        for bad in (0, 169, "a day", -1, None):
            body = assert_apex_error(await _usage(client, owner, APIKey=created.key.api_key, Hours=bad) if bad is not None
                                     else await _usage(client, owner, Hours=3), 400)
            assert "Hours" in body["errormsg"] or "APIKey" in body["errormsg"]


async def test_who_may_read_which_keys_usage(server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    owner, other, admin = await make_user(), await make_user(), await make_user(admin=True)
    first = await make_key(owner.user_id)
    second = await make_key(owner.user_id)
    theirs = await make_key(other.user_id)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        first_session = {"aptoken": await key_token(client, first)}
        # A key, by its session or by a signed request, reads its own usage only.
        assert (await _usage(client, first_session, APIKey=first.key.api_key)).status_code == 200
        assert (await _usage(client, signed_headers(first), APIKey=first.key.api_key)).status_code == 200
        for headers in (first_session, signed_headers(first)):
            assert_apex_error(await _usage(client, headers, APIKey=second.key.api_key), 404)
        # A person reads their own keys; another user's key answers as a key that does not exist.
        me = {"aptoken": await password_token(client, owner.username, owner.password)}
        assert (await _usage(client, me, APIKey=second.key.api_key)).status_code == 200
        missing = assert_apex_error(await _usage(client, me, APIKey="0" * 32), 404)
        foreign = assert_apex_error(await _usage(client, me, APIKey=theirs.key.api_key), 404)
        assert foreign == missing
        assert_apex_error(await _usage(client, me, APIKey=first.key.api_key, UserId=other.user_id), 404)
        # An administrator reads any key's.
        boss = {"aptoken": await password_token(client, admin.username, admin.password)}
        r = await _usage(client, boss, APIKey=theirs.key.api_key)
        assert r.status_code == 200 and r.json()["UserId"] == other.user_id
        # Nobody signed in: 401.
        assert_apex_error(await _usage(client, {}, APIKey=first.key.api_key), 401)
