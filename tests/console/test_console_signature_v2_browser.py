"""The console's signature helper computes Signature v2 (RFC 9421) in a real Chromium, with WebCrypto:
its headers equal the Python signer's (hmac-sha256 and ed25519), and a real server accepts them.
New with Signature v2 (on main the page has no v2 section)."""

from __future__ import annotations

import base64
import time

import httpx
from console_support import browser, context, db, page, shot, sign_in  # noqa: F401  (fixtures)

from keygate.domain.httpsig import RequestParts, sign_request

SECRET = "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c"
API_KEY = "8d4f1a2b3c5e6f708192a3b4c5d6e7f8"
# RFC 9421 B.1.4 test-key-ed25519
ED25519_PEM = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n"
               "-----END PRIVATE KEY-----\n")
ED25519_RAW = "n4Ni+HpISpVObnQMW0wOhCKROaIKqKtW/2ZYb2p9KcU="


async def _headers(page) -> dict[str, str]:  # type: ignore[no-untyped-def]
    await page.wait_for_function("() => document.getElementById('v2-headers').textContent.includes('Signature: ')")
    return dict(line.split(": ", 1) for line in (await page.locator("#v2-headers").inner_text()).splitlines())


async def test_the_browser_signs_v2_as_the_python_signer_does(server, page, db) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{server.base_url}/console/signature")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    await page.get_by_label("API secret").fill(SECRET)
    await page.get_by_label("API key").fill(API_KEY)
    await page.get_by_label("Request path").fill("/AP/SendOrder?symbol=BTC&side=buy")
    await page.get_by_label("Request body").fill('{"qty": "1.5", "note": "é"}')
    await page.get_by_label("Created (Unix seconds)").fill("1700000000")
    await page.get_by_label("Once-only value").fill('n-1"\\x')
    body = '{"qty": "1.5", "note": "é"}'.encode()
    parts = RequestParts("POST", "/AP/SendOrder", "symbol=BTC&side=buy", None, {}, body, True)
    expected = sign_request(parts, keyid=API_KEY, key=SECRET.encode(), alg="hmac-sha256", created=1700000000, nonce='n-1"\\x')
    await page.wait_for_function("s => document.getElementById('v2-headers').textContent.includes(s)", arg=expected["Signature"])
    assert await _headers(page) == expected
    curl = await page.locator("#v2-curl").inner_text()
    assert SECRET not in curl and "--data-binary" in curl
    await shot(page, "12-signature-v2-helper", db)

    await page.get_by_label("Algorithm").select_option("ed25519")
    for private in (ED25519_PEM, ED25519_RAW):
        await page.get_by_label("Ed25519 private key").fill(private)
        want = sign_request(parts, keyid=API_KEY, key=base64.b64decode(ED25519_RAW), alg="ed25519", created=1700000000,
                            nonce='n-1"\\x')
        await page.wait_for_function("s => document.getElementById('v2-headers').textContent.includes(s)", arg=want["Signature"])
        assert await _headers(page) == want

    await page.get_by_label("Method").select_option("GET")
    await page.get_by_label("Request body").fill("")
    get = sign_request(RequestParts("GET", "/AP/SendOrder", "symbol=BTC&side=buy", None, {}, None, False), keyid=API_KEY,
                       key=base64.b64decode(ED25519_RAW), alg="ed25519", created=1700000000, nonce='n-1"\\x')
    await page.wait_for_function("s => document.getElementById('v2-headers').textContent.includes(s)", arg=get["Signature"])
    assert await _headers(page) == get and "Content-Digest" not in get
    assert sent == [], f"the helper sent requests: {sent}"


async def test_the_browser_v2_headers_are_accepted_by_the_server(server, make_user, make_key, page) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id)
    await sign_in(page, server.base_url, user.username, user.password)
    await page.goto(f"{server.base_url}/console/signature?api_key={created.key.api_key}")
    await page.get_by_label("API secret").fill(created.secret)
    await page.get_by_label("Created (Unix seconds)").fill(str(int(time.time())))
    headers = await _headers(page)
    reply = httpx.post(f"{server.base_url}/AP/GetUserInfo", content=b"{}",
                       headers={"Content-Type": "application/json", **headers}, timeout=10)
    assert reply.status_code == 200 and reply.json()["UserId"] == user.user_id, reply.text
