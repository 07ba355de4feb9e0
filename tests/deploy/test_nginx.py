"""Debian's nginx in front of keygate, running the configurations the documentation gives, as written.

* The README's ``auth_request`` example, in front of an upstream that echoes what it receives: allowed
  (the upstream answers and gets ``X-User-Id``), refused (the client sees keygate's status and APEX
  body), and the client address right (clients connect from 127.x.y.5 and 127.x.y.6; nginx, on
  127.0.0.1, is the trusted proxy).
* docs/deployment.md's nginx site, with TLS: API calls and WebSocket frames get the proxied client's
  address (allowlists right both ways; one client's failures do not throttle another), and behind TLS
  console cookies are ``Secure`` and redirects point at ``https://``.

Only the ports, the upstream and the certificate paths are templated into the documents' blocks.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from proxy_support import (
    IP_FAILURES,
    NGINX,
    Proxy,
    audited_addresses,
    client_from,
    doc_block,
    echo_upstream,
    free_ports,
    loopback_pair,
    need_binary,
    received,
    run_nginx,
    self_signed,
    signed,
    signed_payload,
)
from websockets.asyncio.client import connect

from keygate.service.principal import OPERATOR
from support import Server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEPLOYMENT = (ROOT / "docs" / "deployment.md").read_text()
REFUSED_BY_ALLOWLIST = "This API key may not be used from your IP address"


def readme_auth_request_block() -> str:
    return doc_block(README, "### Putting keygate in front of your own API", "## Configuration", "nginx")


def deployment_site_block() -> str:
    return doc_block(DEPLOYMENT, "## Behind a reverse proxy", "## Forward auth", "nginx")


def keygate_port(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def auth_request_nginx(keygate_behind_proxies: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, str]]:
    """nginx on a free port, serving the README's block; the echo upstream stands for trading-backend."""
    need_binary(NGINX, "nginx")
    block = readme_auth_request_block()
    assert "http://trading-backend" in block and "127.0.0.1:8000" in block
    (port,) = free_ports(1)
    with echo_upstream() as upstream:
        block = block.replace("http://trading-backend", upstream.url).replace("127.0.0.1:8000", f"127.0.0.1:{keygate_port(keygate_behind_proxies)}")
        with run_nginx(tmp_path_factory.mktemp("nginx-auth"), f"server {{\n    listen 127.0.0.1:{port};\n{block}}}", port) as proxy:
            yield proxy, f"http://127.0.0.1:{port}"


def assert_apex_refusal(reply: httpx.Response, status: int, message: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) == {"result", "errormsg", "errorcode", "detail"} and body["result"] is False, body
    if message is not None:
        assert body["errormsg"] == message, body
    assert "X-Upstream" not in reply.headers  # the operator's API never saw it
    return body


async def test_readme_auth_request_allows_and_hands_the_identity_to_the_upstream(auth_request_nginx, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    _, url = auth_request_nginx
    here, _ = loopback_pair()
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], [here])
    with client_from(here) as client:
        reply = client.post(f"{url}/AP/SendOrder", headers={**signed(created), "X-User-Id": "1"}, json={"Side": 0})
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Upstream"] == "echo"
    seen = received(reply)
    assert seen["x-user-id"] == [str(user.user_id)]  # keygate's, not the one the client sent
    assert reply.json()["body"] == '{"Side":0}' or json.loads(reply.json()["body"]) == {"Side": 0}


async def test_readme_auth_request_refusals_reach_the_client_with_keygates_status_and_body(auth_request_nginx, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    _, url = auth_request_nginx
    here, _ = loopback_pair()
    user = await make_user()
    reader = await make_key(user.user_id, [], [here])
    trader = await make_key(user.user_id, ["Trading"], [here])
    with client_from(here) as client:
        body = assert_apex_refusal(client.post(f"{url}/AP/SendOrder"), 401)
        assert body["errorcode"] == 20 and "aptoken" in body["errormsg"]
        assert_apex_refusal(client.post(f"{url}/AP/SendOrder", headers={**signed(trader), "Signature": "0" * 64}), 401, "Invalid credentials")
        body = assert_apex_refusal(client.post(f"{url}/AP/SendOrder", headers=signed(reader)), 403)
        assert "Trading" in body["errormsg"]
        body = assert_apex_refusal(client.post(f"{url}/AP/SendOrder", headers={**signed(trader), "UserId": "x"}), 400)
        assert body["errorcode"] == 100


async def test_readme_auth_request_sees_the_client_address(auth_request_nginx, kg, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    _, url = auth_request_nginx
    here, there = loopback_pair()
    user = await make_user()
    mine = await make_key(user.user_id, ["Trading"], [here])
    elsewhere = await make_key(user.user_id, ["Trading"], [there])
    with client_from(here) as client:
        assert client.post(f"{url}/AP/SendOrder", headers=signed(mine)).status_code == 200
        # A client's own X-Forwarded-For is replaced by the README's block ($remote_addr).
        assert client.post(f"{url}/AP/SendOrder", headers={**signed(mine), "X-Forwarded-For": there}).status_code == 200
        # And a Forwarded header of its own is dropped.
        assert client.post(f"{url}/AP/SendOrder", headers={**signed(mine), "Forwarded": f"for={there}"}).status_code == 200
        assert_apex_refusal(client.post(f"{url}/AP/SendOrder", headers={**signed(elsewhere), "Forwarded": f"for={there}"}), 401, REFUSED_BY_ALLOWLIST)
        assert_apex_refusal(client.post(f"{url}/AP/SendOrder", headers={**signed(elsewhere), "X-Forwarded-For": there}), 401, REFUSED_BY_ALLOWLIST)
    with client_from(there) as client:
        assert client.post(f"{url}/AP/SendOrder", headers=signed(elsewhere)).status_code == 200
        assert_apex_refusal(client.post(f"{url}/AP/SendOrder", headers=signed(mine)), 401, REFUSED_BY_ALLOWLIST)
    for _ in range(50):  # the tallied successes and the refusal reach the trail in separate writes
        seen = set(await audited_addresses(kg, mine, 2))
        if seen == {here, there}:
            break
        await asyncio.sleep(0.1)
    assert seen == {here, there}


async def test_readme_auth_request_throttles_with_429_and_retry_after(auth_request_nginx, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    _, url = auth_request_nginx
    here, there = loopback_pair()
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    with client_from(here) as client:
        replies = [client.post(f"{url}/AP/SendOrder", headers={**signed(created), "Signature": "0" * 64}) for _ in range(IP_FAILURES + 1)]
    assert [r.status_code for r in replies[:IP_FAILURES]] == [401] * IP_FAILURES
    body = assert_apex_refusal(replies[-1], 429)
    assert "Too many" in body["errormsg"] and int(replies[-1].headers["Retry-After"]) >= 1
    with client_from(there) as other:  # another client behind the same proxy is not throttled
        assert other.post(f"{url}/AP/SendOrder", headers=signed(created)).status_code == 200


def test_readme_auth_request_answers_503_when_keygate_is_unreachable(tmp_path: Path) -> None:
    need_binary(NGINX, "nginx")
    port, dead = free_ports(2)
    block = readme_auth_request_block().replace("127.0.0.1:8000", f"127.0.0.1:{dead}")
    with echo_upstream() as upstream:
        block = block.replace("http://trading-backend", upstream.url)
        with run_nginx(tmp_path, f"server {{\n    listen 127.0.0.1:{port};\n{block}}}", port):
            reply = httpx.post(f"http://127.0.0.1:{port}/AP/SendOrder", headers={"aptoken": "x" * 20})
    body = assert_apex_refusal(reply, 503)
    assert body["errorcode"] == 102


# ----- docs/deployment.md's site, with TLS ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_site(keygate_behind_proxies: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    need_binary(NGINX, "nginx")
    folder = tmp_path_factory.mktemp("nginx-site")
    cert, key = self_signed(folder)
    block = deployment_site_block()
    for written in ("listen 443 ssl;", "# ssl_certificate ...; ssl_certificate_key ...;", "127.0.0.1:8000"):
        assert written in block, written
    (port,) = free_ports(1)
    block = (block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
             .replace("# ssl_certificate ...; ssl_certificate_key ...;", f"ssl_certificate {cert}; ssl_certificate_key {key};")
             .replace("127.0.0.1:8000", f"127.0.0.1:{keygate_port(keygate_behind_proxies)}"))
    with run_nginx(folder, block, port):
        yield f"127.0.0.1:{port}", cert


async def test_site_calls_and_console_behind_tls(tls_site, make_user, make_key, kg) -> None:  # type: ignore[no-untyped-def]
    host, cert = tls_site
    here, there = loopback_pair()
    user = await make_user()
    mine = await make_key(user.user_id, ["Trading"], [here])
    elsewhere = await make_key(user.user_id, ["Trading"], [there])
    with client_from(here, verify=ssl.create_default_context(cafile=str(cert))) as client:
        base = f"https://{host}"
        ok = client.post(f"{base}/AP/AuthenticateUser", headers=signed(mine))
        assert ok.status_code == 200 and ok.json()["Authenticated"] is True, ok.text
        # $proxy_add_x_forwarded_for keeps the client's own entry; only the one nginx adds is believed.
        assert client.post(f"{base}/AP/AuthenticateUser", headers={**signed(mine), "X-Forwarded-For": there}).status_code == 200
        assert client.post(f"{base}/AP/AuthenticateUser", headers={**signed(mine), "Forwarded": f"for={there}"}).status_code == 200
        refused = client.post(f"{base}/AP/AuthenticateUser", headers={**signed(elsewhere), "X-Forwarded-For": there})
        assert refused.status_code == 401 and refused.json()["errormsg"] == REFUSED_BY_ALLOWLIST
        token = ok.json()["SessionToken"]
        assert client.get(f"{base}/AP/GetUserInfo", headers={"aptoken": token}).status_code == 200

        login = client.get(f"{base}/console/login")
        assert login.status_code == 200
        cookies = login.headers.get_list("set-cookie")
        assert cookies and all("; secure" in c.lower() for c in cookies), cookies
        slash = client.get(f"{base}/console")
        assert slash.status_code in (307, 308) and slash.headers["location"] == f"{base}/console/", slash.headers
        home = client.get(f"{base}/")
        assert str(httpx.URL(f"{base}/").join(home.headers["location"])) == f"{base}/console/"
        # A person signs in to the console through the proxy: a Secure session cookie that works over https.
        csrf = re.search(r'name="csrf_token" value="([^"]*)"', login.text)
        assert csrf is not None
        signed_in = client.post(f"{base}/console/login", data={"csrf_token": csrf.group(1), "username": user.username, "password": user.password})
        assert signed_in.status_code == 303, signed_in.text
        session = [c for c in signed_in.headers.get_list("set-cookie") if c.startswith("kg_session=")]
        assert session and "; secure" in session[0].lower(), session
        assert str(httpx.URL(f"{base}/").join(signed_in.headers["location"])).startswith(f"{base}/console")
        assert user.username in client.get(f"{base}/console/").text
    with client_from(there, verify=ssl.create_default_context(cafile=str(cert))) as client:
        signed_in = client.post(f"https://{host}/AP/AuthenticateUser", headers=signed(elsewhere))
        assert signed_in.status_code == 200, signed_in.text
        # A session made from one address is not accepted from another (KEYGATE_BIND_SESSION_IP).
        assert client.get(f"https://{host}/AP/GetUserInfo", headers={"aptoken": token}).status_code == 401
    assert set(await audited_addresses(kg, mine, 2)) == {here}
    for _ in range(60):  # the console's sign-in, as the server's audit writer records it
        console_sign_ins = await kg.audit.query(OPERATOR, user_id=user.user_id, action="auth.password")
        if console_sign_ins:
            break
        await asyncio.sleep(0.1)
    assert [e.client_ip for e in console_sign_ins] == [here]


async def _ask(ws: Any, i: int, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({"m": 0, "i": i, "n": name, "o": json.dumps(payload)}))
    reply = json.loads(await ws.recv())
    assert reply["i"] == i, reply
    return json.loads(reply["o"])  # type: ignore[no-any-return]


def _wss(tls_site: tuple[str, Path], address: str) -> Any:
    host, cert = tls_site
    return connect(f"wss://{host}/WSGateway", ssl=ssl.create_default_context(cafile=str(cert)), local_addr=(address, 0))


async def test_site_websocket_frames_get_the_client_address(tls_site, make_user, make_key, kg) -> None:  # type: ignore[no-untyped-def]
    here, there = loopback_pair()
    user = await make_user()
    mine = await make_key(user.user_id, ["Trading"], [here])
    elsewhere = await make_key(user.user_id, ["Trading"], [there])
    async with _wss(tls_site, here) as ws:
        assert (await _ask(ws, 2, "AuthenticateUser", signed_payload(mine)))["Authenticated"] is True
        assert (await _ask(ws, 4, "GetUserInfo", {}))["UserId"] == user.user_id
        refused = await _ask(ws, 6, "AuthenticateUser", signed_payload(elsewhere))
        assert refused["errormsg"] == REFUSED_BY_ALLOWLIST, refused
    async with _wss(tls_site, there) as ws:
        assert (await _ask(ws, 2, "AuthenticateUser", signed_payload(elsewhere)))["Authenticated"] is True
        assert (await _ask(ws, 4, "AuthenticateUser", signed_payload(mine)))["errormsg"] == REFUSED_BY_ALLOWLIST
    for _ in range(50):  # the tallied successes and the refusal reach the trail in separate writes
        seen = set(await audited_addresses(kg, mine, 2))
        if seen == {here, there}:
            break
        await asyncio.sleep(0.1)
    assert seen == {here, there}


async def test_site_websocket_failures_of_one_client_do_not_throttle_another(tls_site, make_user) -> None:  # type: ignore[no-untyped-def]
    here, there = loopback_pair()
    user = await make_user()
    async with _wss(tls_site, here) as ws:
        answers = [await _ask(ws, 2 * n + 2, "AuthenticateUser", {"UserName": "nobody-" + here, "Password": "wrong password"})
                   for n in range(IP_FAILURES + 1)]
    assert all(a.get("Authenticated") is False for a in answers[:IP_FAILURES]), answers
    assert "Too many" in answers[-1]["errormsg"], answers[-1]
    async with _wss(tls_site, there) as ws:
        reply = await _ask(ws, 2, "AuthenticateUser", {"UserName": user.username, "Password": user.password})
        assert reply["Authenticated"] is True, reply
    async with _wss(tls_site, here) as ws:  # the first client is still held back
        assert "Too many" in (await _ask(ws, 2, "AuthenticateUser", {"UserName": user.username, "Password": user.password}))["errormsg"]
