"""Ed25519 API keys over the APEX wire: keygate holds only a public key; AuthenticateUser (HTTP and
WebSocket), signed per-request calls and forward auth accept the Ed25519 signature of
``Nonce + UserId + APIKey``; refusals look exactly like an HMAC key's. On SQLite and PostgreSQL, and
with Redis as the shared replay state on a real server."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from api_helpers import assert_apex_error, password_token, signed_headers
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from live_helpers import ask, body, frame, ws_url
from sqlalchemy import text
from websockets.asyncio.client import connect

from keygate.api import create_app
from keygate.config import Settings
from keygate.domain.errors import NotFound
from keygate.domain.iprules import IpAllowlist
from keygate.domain.key_material import KeyType, fingerprint
from keygate.domain.permissions import parse_permissions
from keygate.domain.signature import signing_message
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR
from support import REDIS_URL, need, redis_available, start_server, stop_server


def _raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(private: Ed25519PrivateKey, nonce: str, user_id: int, api_key: str, encoding: str = "b64") -> str:
    raw = private.sign(signing_message(nonce, user_id, api_key))
    return {"b64": base64.b64encode(raw).decode(), "b64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            "hex": raw.hex()}[encoding]


def ed_headers(private: Ed25519PrivateKey, created: CreatedKey, nonce: str | None = None, encoding: str = "b64") -> dict[str, str]:
    nonce = nonce or str(secrets.randbelow(10**12) + 10**12)
    uid = created.key.user_id
    return {"APIKey": created.key.api_key, "UserId": str(uid), "Nonce": nonce,
            "Signature": sign(private, nonce, uid, created.key.api_key, encoding)}


@pytest.fixture
async def make_ed_key(kg: Keygate) -> AsyncIterator:  # type: ignore[type-arg]
    made: list[CreatedKey] = []

    async def make(user_id: int, permissions: list[str] | None = None, ips: list[str] | None = None
                   ) -> tuple[Ed25519PrivateKey, CreatedKey]:
        private = Ed25519PrivateKey.generate()
        created = await kg.keys.create(OPERATOR, user_id, parse_permissions(permissions or []), IpAllowlist.parse(ips or []),
                                       key_type=KeyType.ED25519, public_key=_raw(private))
        made.append(created)
        return private, created

    yield make
    for created in made:
        try:
            await kg.keys.delete(OPERATOR, created.key.user_id, created.key.api_key)
        except NotFound:
            pass


async def test_add_an_ed25519_key_over_the_api_and_listings_show_no_key_material(client: httpx.AsyncClient, kg: Keygate,
                                                                                  make_user) -> None:
    user = await make_user()
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    private = Ed25519PrivateKey.generate()
    raw = _raw(private)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    r = await client.post("/AP/AddUserAPIKey", headers=pw, json={"UserId": user.user_id, "KeyType": "ed25519", "PublicKey": pem,
                                                                  "Permissions": ["Trading"], "Label": "ed"})
    assert r.status_code == 200, r.text
    created = r.json()
    assert "APISecret" not in created and created["KeyType"] == "ed25519"
    assert created["PublicKeyFingerprint"] == fingerprint(raw) and created["Permissions"] == ["Trading"]

    listed = await client.post("/AP/GetUserAPIKeys", headers=pw, json={"UserId": user.user_id})
    assert listed.status_code == 200
    [entry] = listed.json()
    assert entry["KeyType"] == "ed25519" and entry["PublicKeyFingerprint"] == fingerprint(raw)
    for form in (base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="), raw.hex(), pem.splitlines()[1]):
        assert form not in listed.text and form not in r.text

    # An hmac key still gets its secret, and says so.
    r = await client.post("/AP/AddUserAPIKey", headers=pw, json={"UserId": user.user_id})
    assert r.status_code == 200 and r.json()["KeyType"] == "hmac" and r.json()["PublicKeyFingerprint"] is None
    assert len(r.json()["APISecret"]) == 64

    # Stored: no secret at all, the public key only; audited with its type and fingerprint, not the key.
    await kg.flush()
    async with kg.engine.connect() as conn:
        row = (await conn.execute(text("SELECT key_type, sealed_secret, public_key FROM api_keys WHERE api_key = :k"),
                                  {"k": created["APIKey"]})).one()
        detail = (await conn.execute(text("SELECT detail FROM audit_events WHERE action = 'key.create' AND api_key = :k"),
                                     {"k": created["APIKey"]})).scalar_one()
    assert row[0] == "ed25519" and row[1] is None and base64.b64decode(row[2]) == raw
    assert "key_type=ed25519" in detail and fingerprint(raw) in detail and base64.b64encode(raw).decode() not in detail

    # It signs in with the private key the server never saw.
    nonce = "1700000000123"
    headers = {"APIKey": created["APIKey"], "UserId": str(user.user_id), "Nonce": nonce,
               "Signature": sign(private, nonce, user.user_id, created["APIKey"])}
    r = await client.post("/AP/AuthenticateUser", headers=headers)
    assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text
    assert (await client.get("/AP/GetUserPermissions", headers={"aptoken": r.json()["SessionToken"]})).json() == ["Trading"]


async def test_bad_key_input_gets_a_4xx_apex_body_and_stores_nothing(client: httpx.AsyncClient, kg: Keygate, make_user) -> None:
    user = await make_user()
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    private = Ed25519PrivateKey.generate()
    pkcs8 = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    cases = [
        ({"KeyType": "ed25519", "PublicKey": pkcs8}, "private key"),
        ({"KeyType": "ed25519"}, "Missing PublicKey"),
        ({"KeyType": "ed25519", "PublicKey": "not a key"}, "PublicKey must be"),
        ({"KeyType": "ed25519", "PublicKey": 12}, "PublicKey must be"),
        ({"KeyType": "ed25519", "PublicKey": base64.b64encode(b"\x01" * 33).decode()}, "PublicKey must be"),
        ({"KeyType": "rsa", "PublicKey": base64.b64encode(_raw(private)).decode()}, "KeyType"),
        ({"PublicKey": base64.b64encode(_raw(private)).decode()}, "ed25519"),
    ]
    for extra, message in cases:
        r = await client.post("/AP/AddUserAPIKey", headers=pw, json={"UserId": user.user_id, **extra})
        err = assert_apex_error(r, 400)
        assert message in err["errormsg"], (extra, err)
        assert pkcs8.splitlines()[1] not in r.text and seed.hex() not in r.text
    assert await kg.keys.list(OPERATOR, user.user_id) == []


async def test_sign_in_signed_calls_and_forward_auth_with_every_encoding(client: httpx.AsyncClient, kg: Keygate, make_user,
                                                                         make_ed_key) -> None:
    user = await make_user()
    private, created = await make_ed_key(user.user_id, ["Trading", "Deposit"])
    for encoding in ("b64", "b64url", "hex"):
        r = await client.post("/AP/AuthenticateUser", headers=ed_headers(private, created, encoding=encoding))
        assert r.status_code == 200 and r.json()["Authenticated"] is True, (encoding, r.text)
        # A per-request signed call, with no session.
        r = await client.get("/AP/GetUserPermissions", headers=ed_headers(private, created, encoding=encoding))
        assert r.status_code == 200 and r.json() == ["Trading", "Deposit"], r.text
    # The same JSON-body form APEX clients use.
    r = await client.post("/AP/AuthenticateUser", json={**ed_headers(private, created), "UserId": user.user_id})
    assert r.status_code == 200, r.text
    # Forward auth: the proxy's question about an ed25519-signed request.
    transport = httpx.ASGITransport(app=create_app(keygate=kg), client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as proxy:
        r = await proxy.get("/keygate/authorize", headers=ed_headers(private, created), params={"require": "Trading"})
        assert r.status_code == 200, r.text
        assert r.headers["X-Keygate-Api-Key"] == created.key.api_key and r.headers["X-Keygate-Auth"] == "key"
        assert r.headers["X-Keygate-User-Id"] == str(user.user_id)
        wrong = ed_headers(Ed25519PrivateKey.generate(), created)
        assert (await proxy.get("/keygate/authorize", headers=wrong)).status_code == 401


async def test_wrong_signatures_are_refused_exactly_like_an_hmac_keys(client: httpx.AsyncClient, kg: Keygate, make_user,
                                                                       make_key, make_ed_key) -> None:
    user = await make_user()
    private, created = await make_ed_key(user.user_id, ["Trading"])
    hmac_key = await make_key(user.user_id, ["Trading"])
    hmac_wrong = {**signed_headers(hmac_key), "Signature": "0" * 64}
    reference = await client.post("/AP/AuthenticateUser", headers=hmac_wrong)
    assert reference.status_code == 401 and reference.json()["Authenticated"] is False
    reference_call = await client.get("/AP/GetUserPermissions", headers=hmac_wrong)
    assert reference_call.status_code in (401, 403)

    nonce = "1700000000999"
    forged = [
        ed_headers(Ed25519PrivateKey.generate(), created),  # another private key
        {**ed_headers(private, created, nonce=nonce), "Nonce": "1700000001000"},  # signed for another nonce
        {**ed_headers(private, created), "Signature": signed_headers(hmac_key)["Signature"]},  # hmac-shaped: never matches ed25519
        {**ed_headers(private, created), "Signature": ed_headers(private, created)["Signature"].swapcase()},
        {**ed_headers(private, created), "UserId": str(user.user_id + 100000)},  # another user
    ]
    for headers in forged:
        r = await client.post("/AP/AuthenticateUser", headers=headers)
        assert (r.status_code, r.content) == (reference.status_code, reference.content), (headers, r.text)
        r = await client.get("/AP/GetUserPermissions", headers=headers)
        assert (r.status_code, r.content) == (reference_call.status_code, reference_call.content), r.text
    # An Ed25519 signature does not sign in with an hmac key either.
    r = await client.post("/AP/AuthenticateUser", headers={**signed_headers(hmac_key), "Signature": ed_headers(private, created)["Signature"]})
    assert (r.status_code, r.content) == (reference.status_code, reference.content)
    # A signature of no accepted shape is a 400 that says which shapes are.
    r = await client.post("/AP/AuthenticateUser", headers={**ed_headers(private, created), "Signature": "ab" * 20})
    assert "base64" in assert_apex_error(r, 400)["errormsg"]
    await kg.flush()
    async with kg.engine.connect() as conn:
        reasons = (await conn.execute(text("SELECT reason FROM audit_events WHERE api_key = :k AND outcome = 'failure'"),
                                      {"k": created.key.api_key})).scalars().all()
    assert "signature mismatch" in reasons


async def test_rotation_takes_a_new_public_key_with_the_same_grace(client: httpx.AsyncClient, kg: Keygate, make_user,
                                                                    make_ed_key) -> None:
    user = await make_user()
    pw = {"aptoken": await password_token(client, user.username, user.password)}
    old, created = await make_ed_key(user.user_id, ["Trading"])
    old_session = (await client.post("/AP/AuthenticateUser", headers=ed_headers(old, created))).json()["SessionToken"]
    body_ = {"UserId": user.user_id, "APIKey": created.key.api_key}
    r = await client.post("/AP/RotateUserAPIKey", headers=pw, json=body_)
    assert "Missing PublicKey" in assert_apex_error(r, 400)["errormsg"]
    r = await client.post("/AP/RotateUserAPIKey", headers=pw, json={**body_, "PublicKey": base64.b64encode(_raw(old)).decode()})
    assert "new one" in assert_apex_error(r, 400)["errormsg"]

    new = Ed25519PrivateKey.generate()
    r = await client.post("/AP/RotateUserAPIKey", headers=pw, json={**body_, "GraceSeconds": 300, "PublicKey": _raw(new).hex()})
    assert r.status_code == 200, r.text
    assert "APISecret" not in r.json() and r.json()["PublicKeyFingerprint"] == fingerprint(_raw(new))
    assert r.json()["PreviousSecretValidUntil"] is not None
    for private in (old, new):  # both sign during the grace
        assert (await client.post("/AP/AuthenticateUser", headers=ed_headers(private, created))).status_code == 200
    assert (await client.get("/AP/GetUserInfo", headers={"aptoken": old_session})).status_code == 200

    newer = Ed25519PrivateKey.generate()
    r = await client.post("/AP/RotateUserAPIKey", headers=pw, json={**body_, "PublicKey": base64.b64encode(_raw(newer)).decode()})
    assert r.status_code == 200 and r.json()["PreviousSecretValidUntil"] is None
    for private in (old, new):  # grace 0: the previous public keys stop at once, and their sessions
        assert (await client.post("/AP/AuthenticateUser", headers=ed_headers(private, created))).status_code == 401
    assert (await client.get("/AP/GetUserInfo", headers={"aptoken": old_session})).status_code in (401, 403)
    assert (await client.post("/AP/AuthenticateUser", headers=ed_headers(newer, created))).status_code == 200
    # An hmac key's rotation takes no public key.
    r = await client.post("/AP/AddUserAPIKey", headers=pw, json={"UserId": user.user_id})
    hmac_key = r.json()["APIKey"]
    r = await client.post("/AP/RotateUserAPIKey", headers=pw, json={"UserId": user.user_id, "APIKey": hmac_key,
                                                                     "PublicKey": _raw(new).hex()})
    assert "ed25519" in assert_apex_error(r, 400)["errormsg"]


async def test_http_and_websocket_sign_in_on_a_real_server(server, make_user, make_ed_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    private, created = await make_ed_key(user.user_id, ["Trading"])
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        r = await http.post("/AP/AuthenticateUser", headers=ed_headers(private, created))
        assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text
        r = await http.get("/AP/GetUserPermissions", headers=ed_headers(private, created, encoding="hex"))
        assert r.status_code == 200 and r.json() == ["Trading"]
    async with connect(ws_url(server)) as ws:
        refused = body(await ask(ws, frame(2, "AuthenticateUser", {**ed_headers(Ed25519PrivateKey.generate(), created),
                                                                    "UserId": user.user_id})))
        assert refused["Authenticated"] is False
        reply = body(await ask(ws, frame(4, "AuthenticateUser", {**ed_headers(private, created, encoding="b64url"),
                                                                  "UserId": user.user_id})))
        assert reply["Authenticated"] is True and reply["User"]["UserId"] == user.user_id
        assert body(await ask(ws, frame(6, "GetUserPermissions", {}))) == ["Trading"]


@pytest.fixture(scope="module")
def redis_server(settings: Settings, kg: Keygate) -> Iterator:  # type: ignore[type-arg]
    """A real server with Redis as its shared state and the strict ``increasing`` replay mode for new keys."""
    need(redis_available(), "Redis at 127.0.0.1:6379")
    srv = start_server(settings, extra_env={"KEYGATE_REDIS_URL": REDIS_URL, "KEYGATE_DEFAULT_REPLAY_MODE": "increasing"})
    yield srv
    stop_server(srv)


async def test_replay_rules_hold_for_ed25519_keys_with_redis(redis_server, kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    private = Ed25519PrivateKey.generate()
    async with httpx.AsyncClient(base_url=redis_server.base_url) as http:
        # Made through the server (its policy: the increasing replay mode), by the user's password session.
        token = await password_token(http, user.username, user.password)
        r = await http.post("/AP/AddUserAPIKey", headers={"aptoken": token},
                            json={"UserId": user.user_id, "KeyType": "ed25519", "PublicKey": base64.b64encode(_raw(private)).decode()})
        assert r.status_code == 200 and r.json()["ReplayMode"] == "increasing", r.text
        created = CreatedKey((await kg.keys.lookup(r.json()["APIKey"])), None)  # type: ignore[arg-type]
        first = ed_headers(private, created, nonce="1000")
        assert (await http.post("/AP/AuthenticateUser", headers=first)).status_code == 200
        replayed = await http.post("/AP/AuthenticateUser", headers=first)
        assert replayed.status_code in (400, 401, 403) and json.loads(replayed.content).get("Authenticated", False) is False
        assert (await http.post("/AP/AuthenticateUser", headers=ed_headers(private, created, nonce="999"))).status_code != 200
        assert (await http.post("/AP/AuthenticateUser", headers=ed_headers(private, created, nonce="1001"))).status_code == 200
