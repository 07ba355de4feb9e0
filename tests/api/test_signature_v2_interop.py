"""Interop with the ``http-message-signatures`` package (an independent RFC 9421 implementation, test-only):
it signs requests that a real keygate server accepts, and it verifies the requests the SDK signs.
New with Signature v2 (on main, keygate ignores ``Signature-Input``)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import requests
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, HTTPSignatureKeyResolver, InvalidSignature
from http_message_signatures.algorithms import HMAC_SHA256

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.sdk.client import v2_headers
from keygate.service.principal import OPERATOR
from support import Server, start_server, stop_server

COMPONENTS = ("@method", "@path", "@query", "content-digest")


class _Secret(HTTPSignatureKeyResolver):
    def __init__(self, api_key: str, secret: str) -> None:
        self.api_key, self.secret = api_key, secret.encode()

    def resolve_public_key(self, key_id: str) -> bytes:
        assert key_id == self.api_key
        return self.secret

    def resolve_private_key(self, key_id: str) -> bytes:
        assert key_id == self.api_key
        return self.secret


@pytest.fixture(scope="module")
def server(settings: Settings, kg) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    srv = start_server(settings)
    yield srv
    stop_server(srv)


async def test_keygate_accepts_what_the_package_signs(server, kg, make_user):
    user = await make_user()
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist())
    signer = HTTPMessageSigner(signature_algorithm=HMAC_SHA256, key_resolver=_Secret(created.key.api_key, created.secret))
    body = b'{"UserId": %d}' % user.user_id
    with requests.Session() as http:
        for target, expected in (("/AP/GetUserInfo?x=1", 200), ("/AP/GetUserInfo", 200)):
            request = requests.Request("POST", server.base_url + target, data=body,
                                       headers={"Content-Type": "application/json"}).prepare()
            signer.sign(request, key_id=created.key.api_key, nonce=secrets.token_hex(8), covered_component_ids=COMPONENTS[:3],
                        body=body)  # ``body``: the package adds Content-Digest and covers it
            assert '"content-digest"' in request.headers["Signature-Input"]
            r = http.send(request, timeout=10)
            assert r.status_code == expected, r.text
            assert r.json()["UserId"] == user.user_id
            replay = http.send(request, timeout=10)
            assert replay.status_code == 401


def test_the_package_verifies_what_the_sdk_signs():
    api_key, secret = "k" * 32, secrets.token_hex(32)
    body = b'{"a": 1}'
    url = "https://api.example/AP/SendOrder?symbol=BTC"
    request = requests.Request("POST", url, data=body, headers=v2_headers("POST", url, body, api_key, secret)).prepare()
    verifier = HTTPMessageVerifier(signature_algorithm=HMAC_SHA256, key_resolver=_Secret(api_key, secret))
    (result,) = verifier.verify(request, require_components=COMPONENTS, body=body)
    assert result.parameters["keyid"] == api_key and result.parameters["alg"] == "hmac-sha256"
    assert result.parameters["nonce"]
    tampered = requests.Request("POST", url.replace("BTC", "ETH"), data=body, headers=dict(request.headers)).prepare()
    with pytest.raises(InvalidSignature):
        verifier.verify(tampered, require_components=COMPONENTS, body=body)
