"""Signature v2 (RFC 9421 with RFC 9530 Content-Digest) against real server processes.

SQLite with the database as shared state, and PostgreSQL with Redis; two server processes share each
database, so a replay to the second one is refused too. All of this is new in the branch that adds
Signature v2: on main these requests are refused (no v2 verifier; ``Signature-Input`` is ignored).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from keygate.config import Settings
from keygate.domain.digest import content_digest
from keygate.domain.iprules import IpAllowlist
from keygate.domain.signature import compute_signature
from keygate.sdk import AsyncClient, Client
from keygate.sdk.client import v2_headers
from keygate.service.principal import OPERATOR
from support import REDIS_URL, Server, need, redis_available, start_server, stop_server

WINDOW = 5


@pytest.fixture(scope="module")
def servers(settings: Settings, kg) -> Iterator[tuple[Server, Server]]:  # type: ignore[no-untyped-def]
    extra = {"KEYGATE_SIGNATURE_WINDOW_SECONDS": str(WINDOW)}
    if settings.resolved_database_url.startswith("postgresql"):
        need(redis_available(), "Redis at 127.0.0.1:6379")
        extra["KEYGATE_REDIS_URL"] = REDIS_URL
    first = start_server(settings, extra)
    try:
        second = start_server(settings, extra)
    except Exception:
        stop_server(first)
        raise
    yield first, second
    stop_server(first)
    stop_server(second)


@pytest.fixture
async def account(kg, make_user):  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist())
    return user, created


def _signed(server: Server, made, method: str, target: str, body: bytes = b"", **kw):  # type: ignore[no-untyped-def]
    url = server.base_url + target
    headers = v2_headers(method, url, body, made.key.api_key, made.secret, **kw)
    return url, headers


def _send(method: str, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, url, content=body, headers={"Content-Type": "application/json", **headers}, timeout=10)


def test_a_v2_signed_call_is_accepted_and_a_replay_refused_on_every_server(servers, account):
    first, second = servers
    user, created = account
    body = b'{"UserId": %d}' % user.user_id
    url, headers = _signed(first, created, "POST", "/AP/GetUserInfo", body)
    r = _send("POST", url, body, headers)
    assert r.status_code == 200, r.text
    assert r.json()["UserId"] == user.user_id
    again = _send("POST", url, body, headers)
    assert again.status_code == 401 and "nonce was already used" in again.json()["errormsg"]
    elsewhere = _send("POST", url.replace(first.base_url, second.base_url), body, headers)
    assert elsewhere.status_code == 401, elsewhere.text
    assert "nonce was already used" in elsewhere.json()["errormsg"]


def test_body_path_method_and_query_are_covered(servers, account):
    server = servers[0]
    user, created = account
    body = b"{}"
    url, headers = _signed(server, created, "POST", "/AP/GetUserInfo?UserId=%d" % user.user_id, body)
    tampered = _send("POST", url, b'{"UserId": 1}', headers)  # the digest no longer matches the body
    assert tampered.status_code == 400 and "Content-Digest does not match" in tampered.json()["errormsg"]
    redigested = _send("POST", url, b'{"UserId": 1}', {**headers, "Content-Digest": content_digest(b'{"UserId": 1}')})
    assert redigested.status_code == 401 and redigested.json()["errorcode"] == 20, "a new digest breaks the signature"
    other_path = _send("POST", url.replace("GetUserInfo", "GetUserAPIKeys"), body, headers)
    assert other_path.status_code == 401
    other_query = _send("POST", url.replace("UserId=", "UserId=0"), body, headers)
    assert other_query.status_code == 401
    other_method = _send("GET", url, body, headers)
    assert other_method.status_code == 401
    # none of those spent the nonce: the signed request itself still goes through once
    assert _send("POST", url, body, headers).status_code == 200


def test_a_bodyless_request_covers_method_path_and_query(servers, account):
    server = servers[0]
    user, created = account
    url, headers = _signed(server, created, "GET", "/AP/GetUserInfo")
    assert "Content-Digest" not in headers and '"content-digest"' not in headers["Signature-Input"]
    r = httpx.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    url, headers = _signed(server, created, "GET", "/AP/GetUserInfo")
    smuggled = httpx.request("GET", url, content=b'{"UserId": 1}', headers=headers, timeout=10)
    assert smuggled.status_code == 400 and "content-digest" in smuggled.json()["errormsg"], "a body must be covered"


def test_created_must_lie_within_the_window(servers, account):
    server = servers[0]
    _, created = account
    now = int(time.time())
    for when, words in ((now - WINDOW - 30, "s old"), (now + 60, "ahead of the server's clock")):
        url, headers = _signed(server, created, "POST", "/AP/GetUserInfo", b"{}", created=when)
        r = _send("POST", url, b"{}", headers)
        assert r.status_code == 401 and words in r.json()["errormsg"], r.text
    url, headers = _signed(server, created, "POST", "/AP/GetUserInfo", b"{}", created=now - WINDOW + 2)
    assert _send("POST", url, b"{}", headers).status_code == 200


def test_missing_components_and_malformed_fields_are_refused_with_400(servers, account):
    server = servers[0]
    _, created = account
    url = server.base_url + "/AP/GetUserInfo"
    from keygate.domain.httpsig import RequestParts, sign_request

    parts = RequestParts("POST", "/AP/GetUserInfo", "", None, {}, None, False)
    short = sign_request(parts, keyid=created.key.api_key, key=created.secret.encode(), alg="hmac-sha256",
                         created=int(time.time()), nonce="n1", components=("@method", "@path"))
    r = httpx.post(url, headers=short, timeout=10)
    assert r.status_code == 400 and "missing: @query" in r.json()["errormsg"]
    no_nonce = sign_request(parts, keyid=created.key.api_key, key=created.secret.encode(), alg="hmac-sha256",
                            created=int(time.time()), nonce=None)
    r = httpx.post(url, headers=no_nonce, timeout=10)
    assert r.status_code == 400 and ";nonce" in r.json()["errormsg"]
    for bad in ({"Signature-Input": "kg=(", "Signature": "kg=:AA==:"}, {"Signature-Input": short["Signature-Input"]}):
        r = httpx.post(url, headers=bad, timeout=10)
        assert r.status_code == 400 and r.json()["result"] is False, r.text
    wrong_alg = sign_request(parts, keyid=created.key.api_key, key=created.secret.encode(), alg="hmac-sha256",
                             created=int(time.time()), nonce="n2")
    wrong_alg["Signature-Input"] = wrong_alg["Signature-Input"].replace('alg="hmac-sha256"', 'alg="rsa-v1_5-sha256"')
    assert httpx.post(url, headers=wrong_alg, timeout=10).status_code == 400


def test_an_unknown_key_or_wrong_secret_gets_the_one_public_refusal(servers, account):
    server = servers[0]
    _, created = account
    url = server.base_url + "/AP/GetUserInfo"
    wrong = v2_headers("POST", url, b"{}", created.key.api_key, "not the secret")
    unknown = v2_headers("POST", url, b"{}", "0" * 32, created.secret)
    other_alg = v2_headers("POST", url, b"{}", created.key.api_key, created.secret)
    other_alg["Signature-Input"] = other_alg["Signature-Input"].replace('alg="hmac-sha256"', 'alg="ed25519"')
    answers = [_send("POST", url, b"{}", h) for h in (wrong, unknown, other_alg)]
    assert [a.status_code for a in answers] == [401, 401, 401]
    assert answers[0].json()["errormsg"] == answers[1].json()["errormsg"] == answers[2].json()["errormsg"]


def test_sign_in_with_v2_and_a_path_written_in_another_case(servers, account):
    server = servers[0]
    user, created = account
    url, headers = _signed(server, created, "POST", "/ap/authenticateuser", b"{}")
    r = _send("POST", url, b"{}", headers)
    assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text
    token = r.json()["SessionToken"]
    info = httpx.post(server.base_url + "/AP/GetUserInfo", headers={"aptoken": token}, json={}, timeout=10)
    assert info.status_code == 200 and info.json()["UserId"] == user.user_id


async def test_a_key_that_requires_v2_refuses_apex_signatures(servers, kg, make_user):
    server = servers[0]
    user = await make_user()
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), requires_v2=True)
    assert created.key.public_view()["RequiresSignatureV2"] is True
    nonce = str(int(time.time() * 1000))
    apex = {"APIKey": created.key.api_key, "UserId": str(user.user_id), "Nonce": nonce,
            "Signature": compute_signature(created.secret, nonce, user.user_id, created.key.api_key)}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        for path in ("/AP/AuthenticateUser", "/AP/GetUserInfo"):
            r = await client.post(path, headers=apex)
            assert r.status_code == 401 and "Signature v2 (RFC 9421) only" in r.json()["errormsg"], r.text
            apex["Nonce"] = str(int(apex["Nonce"]) + 1)
            apex["Signature"] = compute_signature(created.secret, apex["Nonce"], user.user_id, created.key.api_key)
    async with AsyncClient(server.base_url, user.user_id, created.key.api_key, created.secret, signature="v2") as sdk:
        assert (await sdk.call("GetUserInfo"))["UserId"] == user.user_id
        assert (await sdk.authenticate())["Authenticated"] is True


def test_the_sync_sdk_signs_every_call_with_v2(servers, account):
    server = servers[1]
    user, created = account
    with Client(server.base_url, user.user_id, created.key.api_key, created.secret, signature="v2") as sdk:
        for _ in range(3):
            assert sdk.call("GetUserInfo", {"UserId": user.user_id})["UserId"] == user.user_id
        assert sdk.session_token is None, "v2 signs each call: no session"


def test_forward_auth_with_v2_covers_the_original_request(servers, account):
    server = servers[0]
    user, created = account
    body = json.dumps({"side": "buy"}).encode()
    original = "https://api.example/orders?symbol=BTC"
    headers = v2_headers("POST", original, body, created.key.api_key, created.secret)
    proxy = {"X-Original-Method": "POST", "X-Original-URI": "/orders?symbol=BTC", **headers}
    r = httpx.get(server.base_url + "/keygate/authorize", headers=proxy, timeout=10)  # nginx: no body
    assert r.status_code == 200, r.text
    assert r.headers["X-Keygate-User-Id"] == str(user.user_id) and r.headers["X-Keygate-Auth"] == "key"
    headers = v2_headers("POST", original, body, created.key.api_key, created.secret)
    moved = httpx.get(server.base_url + "/keygate/authorize", timeout=10,
                      headers={"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/orders?symbol=ETH", **headers})
    assert moved.status_code == 401, moved.text
    # Envoy: the original path after /keygate/authorize, and the body forwarded: keygate checks the digest
    headers = v2_headers("POST", original, body, created.key.api_key, created.secret)
    envoy = httpx.post(server.base_url + "/keygate/authorize/orders?symbol=BTC", content=body + b" ", headers=headers, timeout=10)
    assert envoy.status_code == 400 and "Content-Digest" in envoy.json()["errormsg"]
    envoy = httpx.post(server.base_url + "/keygate/authorize/orders?symbol=BTC", content=body, headers=headers, timeout=10)
    assert envoy.status_code == 200, envoy.text


def test_the_handler_reads_the_signed_body(servers, account):
    server = servers[0]
    _, created = account
    body = json.dumps({"APIKey": created.key.api_key, "Hours": 2}).encode()
    url, headers = _signed(server, created, "POST", "/AP/GetUserAPIKeyUsage", body)
    r = _send("POST", url, body, headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["Hours"]) == 2, "the body keygate read for the digest reached the handler"


async def test_an_ed25519_key_signs_v2_and_its_sdk_client_too(servers, kg, make_user):
    """Signature v2 with a public key: keygate holds nothing that can sign, the private key signs the
    whole request (RFC 9421 ``ed25519``), an HMAC signature under the key's id is refused, and the
    SDK's v2 client with ``private_key=`` is accepted (sync)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keygate.domain.key_material import KeyType

    first, second = servers
    user = await make_user()
    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), key_type=KeyType.ED25519,
                                   public_key=raw_public)
    api_key = created.key.api_key
    body = b'{"UserId": %d}' % user.user_id
    url = first.base_url + "/AP/GetUserInfo"
    headers = v2_headers("POST", url, body, api_key, None, private_key=raw_private)
    assert 'alg="ed25519"' in headers["Signature-Input"]
    accepted = _send("POST", url, body, headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["UserId"] == user.user_id
    replayed = _send("POST", url.replace(first.base_url, second.base_url), body, headers)
    assert replayed.status_code == 401, replayed.text
    # Signed as if it were an HMAC key (any secret): refused, with the one public refusal.
    forged = v2_headers("POST", url, body, api_key, "not-the-key", private_key=None)
    refused = _send("POST", url, body, forged)
    assert refused.status_code == 401, refused.text
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    with Client(second.base_url, user.user_id, api_key, private_key=pem, signature="v2") as client:
        assert client.call("GetUserInfo", {"UserId": user.user_id})["UserId"] == user.user_id
