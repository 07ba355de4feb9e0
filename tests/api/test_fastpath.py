"""The APEX endpoints and forward auth are answered in front of the framework (``api/fastpath.py``), and
each answers there exactly as through its FastAPI route.

A request whose body has no length (``Transfer-Encoding: chunked``) still takes the framework's route,
so the same request sent both ways compares the two: status, headers (all but the request id) and body.
The FastAPI route's ``handle`` is counted, so the test also knows which way each request went.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from api_helpers import key_token, password_token
from fastapi.routing import APIRoute

from keygate.api.endpoints import ENDPOINTS

# Answers that differ from one call to the next whichever way they go (a fresh secret, usage counts),
# or that end the session the comparison runs on.
CHANGING = {"LogOut", "AddUserAPIKey", "EnableGoogle2FA", "GetUserAPIKeyUsage"}


@pytest.fixture
def framework_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    handle = APIRoute.handle

    async def counted(self: APIRoute, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        calls.append(self.path)
        await handle(self, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", counted)
    yield calls


async def _no_length(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _both_ways(client: httpx.AsyncClient, calls: list[str], method: str, path: str,
                     headers: dict[str, str]) -> tuple[httpx.Response, httpx.Response]:
    calls.clear()
    fast = await client.request(method, path, headers=headers, content=b"")
    assert calls == [], f"{method} {path} went through the FastAPI route"
    framework = await client.request(method, path, headers=headers, content=_no_length(b""))
    assert len(calls) == 1, f"{method} {path} with a chunked body did not reach the FastAPI route: {calls}"
    return fast, framework


def _same(fast: httpx.Response, framework: httpx.Response, what: str) -> None:
    def seen(r: httpx.Response) -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in r.headers.multi_items() if k != "x-request-id")

    assert fast.status_code == framework.status_code, (what, fast.text, framework.text)
    assert fast.content == framework.content, what
    assert seen(fast) == seen(framework), what
    assert fast.headers["x-request-id"] and framework.headers["x-request-id"] != fast.headers["x-request-id"]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_every_registry_endpoint_answers_alike_both_ways(client: httpx.AsyncClient, framework_calls: list[str],
                                                                reader, make_user, make_key, method: str) -> None:  # type: ignore[no-untyped-def]
    created = await make_key(reader.user_id, ["Trading"])
    person = await make_user()  # a user of its own: a password session reaches the password-session handlers
    callers = {
        "anonymous": {},
        "key session": {"aptoken": await key_token(client, created)},
        "password session": {"aptoken": await password_token(client, person.username, person.password)},
    }
    for name in ENDPOINTS:
        for caller, headers in callers.items():
            if caller != "anonymous" and name in CHANGING:
                continue
            # Two path forms: the canonical one, and one ApexScope rewrites.
            for path in (f"/AP/{name}", f"/ap/{name.lower()}/"):
                fast, framework = await _both_ways(client, framework_calls, method, path, headers)
                _same(fast, framework, (method, path, caller))


@pytest.mark.parametrize("query", ["", "?require=Trading", "?require=Withdraw", "?require=Nonsense"])
async def test_forward_auth_answers_alike_both_ways(client: httpx.AsyncClient, framework_calls: list[str], reader,
                                                    make_key, query: str) -> None:  # type: ignore[no-untyped-def]
    created = await make_key(reader.user_id, ["Trading"])
    token = await key_token(client, created)
    for headers in ({}, {"aptoken": token}, {"aptoken": token, "X-Keygate-Require": "Deposit"}, {"aptoken": "nonsense"}):
        for path in ("/keygate/authorize", "/keygate/authorize/AP/SendOrder"):
            for method in ("GET", "POST"):
                fast, framework = await _both_ways(client, framework_calls, method, path + query, headers)
                _same(fast, framework, (method, path + query, headers))


async def test_other_methods_and_unknown_endpoints_keep_the_framework_answers(client: httpx.AsyncClient,
                                                                                framework_calls: list[str]) -> None:
    r = await client.request("PUT", "/AP/GetUserInfo")
    assert (r.status_code, r.headers["allow"], r.json()["errorcode"]) == (405, "GET, POST", 106)
    r = await client.request("HEAD", "/keygate/authorize")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = await client.post("/AP/NoSuchCall")
    assert r.status_code == 404 and r.json()["errorcode"] == 104
    assert all(r.headers["x-request-id"] for r in [r])
