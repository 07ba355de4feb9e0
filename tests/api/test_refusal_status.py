"""KEYGATE_REFUSAL_STATUS=200: refusals on APEX paths answer 200 with the APEX body, and the document says so."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from live_helpers import check_against_document, reply_schema

from keygate.config import InvalidSetting, Settings
from support import Server, start_server, stop_server


@pytest.fixture(scope="module")
def server_200(settings: Settings, kg) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    srv = start_server(settings, extra_env={"KEYGATE_REFUSAL_STATUS": "200"})
    yield srv
    stop_server(srv)


async def test_refusals_answer_200_with_the_apex_body(server_200: Server) -> None:
    async with httpx.AsyncClient(base_url=server_200.base_url) as client:
        doc = (await client.get("/openapi.json")).json()
        not_signed_in = await client.post("/ap/getuserinfo/")
        assert not_signed_in.status_code == 200 and not_signed_in.headers["x-keygate-status"] == "401"
        assert not_signed_in.json() == {"result": False, "errormsg": not_signed_in.json()["errormsg"], "errorcode": 20, "detail": None}
        check_against_document(doc, reply_schema(doc, "/AP/GetUserInfo", 200), not_signed_in.json())

        bad_signature = await client.post("/AP/AuthenticateUser", headers={"APIKey": "k" * 32, "Signature": "0" * 64, "UserId": "1", "Nonce": "1"})
        assert bad_signature.status_code == 200
        assert bad_signature.json()["Authenticated"] is False and bad_signature.json()["errorcode"] == 20
        check_against_document(doc, reply_schema(doc, "/AP/AuthenticateUser", 200), bad_signature.json())

        unknown = await client.post("/AP/NoSuchCall")
        assert (unknown.status_code, unknown.json()["errorcode"]) == (200, 104)
        too_big = await client.post("/AP/Ping", content=b"x" * 70000)
        assert (too_big.status_code, too_big.json()["errorcode"]) == (200, 100)
        wrong_method = await client.put("/AP/Ping")
        assert (wrong_method.status_code, wrong_method.json()["errorcode"]) == (200, 106)
        assert wrong_method.headers["allow"] == "GET, POST"

        # Forward authentication is for proxies, which read the status: it keeps its 401.
        assert (await client.get("/keygate/authorize")).status_code == 401
        assert "x-keygate-status" not in (await client.get("/AP/Ping")).headers


async def test_the_sdk_reads_refusals_of_a_200_server_and_signs_in_again(server_200: Server, make_user, make_key, kg) -> None:  # type: ignore[no-untyped-def]
    import keygate

    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    async with keygate.AsyncClient(server_200.base_url, user.user_id, created.key.api_key, created.secret) as client:
        assert (await client.call("GetUserInfo"))["UserId"] == user.user_id
        with pytest.raises(keygate.KeygateAPIError) as refused:
            await client.call("AddUserAPIKey")  # a key session may not manage keys
        assert (refused.value.status, refused.value.errorcode) == (403, 20)
        await client.call("LogOut")
        # The session is gone: the SDK reads the 401 behind the 200, signs in again and answers.
        assert (await client.call("GetUserInfo"))["UserId"] == user.user_id


async def test_the_document_of_a_200_server_declares_no_4xx(server_200: Server) -> None:
    async with httpx.AsyncClient(base_url=server_200.base_url) as client:
        doc = (await client.get("/openapi.json")).json()
    assert "KEYGATE_REFUSAL_STATUS=200" in doc["info"]["description"]
    for path, item in doc["paths"].items():
        if path.startswith("/AP/"):
            for op in item.values():
                assert not [c for c in op["responses"] if c.startswith("4")], (path, op["responses"].keys())


async def test_refusals_keep_their_4xx_by_default(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        r = await client.post("/AP/GetUserInfo")
        doc = (await client.get("/openapi.json")).json()
    assert r.status_code == 401 and r.json()["errorcode"] == 20
    check_against_document(doc, reply_schema(doc, "/AP/GetUserInfo", 401), r.json())


def test_the_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYGATE_REFUSAL_STATUS", raising=False)
    assert Settings.from_env().refusal_status == "4xx"
    monkeypatch.setenv("KEYGATE_REFUSAL_STATUS", "200")
    assert Settings.from_env().refusal_status == "200"
    monkeypatch.setenv("KEYGATE_REFUSAL_STATUS", "201")
    with pytest.raises(InvalidSetting, match="KEYGATE_REFUSAL_STATUS='201' is refused: it accepts 4xx or 200"):
        Settings.from_env()


async def test_only_refusals_change_status_server_faults_keep_theirs() -> None:
    """A 5xx is a fault, not a refusal: it keeps its status; a 429 keeps its Retry-After."""
    from starlette.responses import JSONResponse

    from keygate.api.middleware import ApexContext, ApexScope

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        status = int(scope["path"].rsplit("/", 1)[-1].removeprefix("Status"))
        await JSONResponse({"result": False}, status_code=status, headers={"Retry-After": "7"})(scope, receive, send)

    wrapped = ApexScope(app, ["Status503", "Status429", "Status500"], ApexContext(client_address=None), refusal_status="200")  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://test") as client:
        assert (await client.get("/AP/Status503")).status_code == 503
        assert (await client.get("/ap/status500/")).status_code == 500
        throttled = await client.get("/AP/Status429")
        assert throttled.status_code == 200 and throttled.headers["retry-after"] == "7"
