"""The SDK with an Ed25519 key: ``private_key=`` instead of the secret, sync and async, against keygate;
the README's test vector; and, where ``cryptography`` is missing, a clear error naming the extra."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import keygate
from keygate.api import create_app
from keygate.domain.iprules import IpAllowlist
from keygate.domain.key_material import KeyType
from keygate.domain.permissions import parse_permissions
from keygate.sdk.ed25519 import Ed25519Signer, PrivateKeyError
from keygate.service import Keygate
from keygate.service.principal import OPERATOR

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")  # RFC 8032 test 1
NONCE, USER_ID, API_KEY = "2277045681", "42", "8d4f1a2b3c5e6f708192a3b4c5d6e7f8"
SIGNATURE_B64 = "vprmf88ZxIed6Jy2sI+tx/S74F8bDDQTc32b4h2tEhhFzxeyMLyr4Ni/YfkCvz4Li9cf0hOPEVHhF+Fz1UD1Dg=="


def _forms() -> list[object]:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    d = base64.urlsafe_b64encode(SEED).decode().rstrip("=")
    jwk = {"kty": "OKP", "crv": "Ed25519", "d": d, "x": base64.urlsafe_b64encode(key.public_key().public_bytes_raw()).decode().rstrip("=")}
    return [key, SEED, SEED.hex(), base64.b64encode(SEED).decode(), pem, pem.decode(), der, base64.b64encode(der).decode(),
            json.dumps(jwk), json.dumps({"PrivateKeyJwk": jwk, "APIKey": API_KEY})]


def test_signed_headers_give_the_readme_vector_from_every_key_form() -> None:
    for form in _forms():
        for client in (keygate.Client("http://kg", USER_ID, API_KEY, private_key=form),
                       keygate.AsyncClient("http://kg", int(USER_ID), API_KEY, private_key=form)):
            assert client.signed_headers(NONCE) == {"APIKey": API_KEY, "Signature": SIGNATURE_B64, "UserId": USER_ID, "Nonce": NONCE}
            assert "9d61b1" not in repr(client)
    signer = Ed25519Signer(SEED)
    assert signer.apex_signature(NONCE, USER_ID, API_KEY, "hex") == base64.b64decode(SIGNATURE_B64).hex()
    assert signer.apex_signature(NONCE, USER_ID, API_KEY, "base64url") == base64.urlsafe_b64encode(base64.b64decode(SIGNATURE_B64)).decode().rstrip("=")


def test_secret_or_private_key_never_both_nor_neither_and_bad_keys_say_why() -> None:
    with pytest.raises(ValueError, match="either"):
        keygate.Client("http://kg", 1, API_KEY)
    with pytest.raises(ValueError, match="either"):
        keygate.Client("http://kg", 1, API_KEY, "s" * 64, private_key=SEED)
    public_pem = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(PrivateKeyError, match="public key"):
        keygate.Client("http://kg", 1, API_KEY, private_key=public_pem)
    for bad in ("nonsense", b"\x00" * 31, 42, json.dumps({"kty": "RSA"})):
        with pytest.raises(PrivateKeyError):
            keygate.AsyncClient("http://kg", 1, API_KEY, private_key=bad)


async def test_async_client_signs_in_and_signs_calls_with_an_ed25519_key(kg: Keygate, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    private = Ed25519PrivateKey.generate()
    created = await kg.keys.create(OPERATOR, user.user_id, parse_permissions(["Trading"]), IpAllowlist(),
                                   key_type=KeyType.ED25519, public_key=private.public_key().public_bytes_raw())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    transport = httpx.ASGITransport(app=create_app(keygate=kg), client=("198.19.7.7", 40000))
    async with keygate.AsyncClient("http://kg", user.user_id, created.key.api_key, private_key=pem, transport=transport) as client:
        assert await client.call("GetUserPermissions") == ["Trading"]
        assert client.session_token
        assert await client.call("GetUserPermissions", signed=True) == ["Trading"]
    wrong = Ed25519PrivateKey.generate()
    async with keygate.AsyncClient("http://kg", user.user_id, created.key.api_key, private_key=wrong, transport=transport) as client:
        with pytest.raises(keygate.KeygateAPIError) as refused:
            await client.authenticate()
        assert refused.value.status == 401
    await kg.keys.delete(OPERATOR, user.user_id, created.key.api_key)


async def test_sync_client_on_a_real_server(kg: Keygate, server, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    private = Ed25519PrivateKey.generate()
    created = await kg.keys.create(OPERATOR, user.user_id, parse_permissions(["Deposit"]), IpAllowlist(),
                                   key_type=KeyType.ED25519, public_key=private.public_key().public_bytes_raw())
    await kg.flush()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    code = ("import keygate, sys, json\n"
            "with keygate.Client(sys.argv[1], sys.argv[2], sys.argv[3], private_key=bytes.fromhex(sys.argv[4])) as c:\n"
            "    print(json.dumps([c.call('GetUserPermissions'), c.call('GetUserInfo', signed=True)['UserId']]))\n")
    result = subprocess.run([sys.executable, "-c", code, server.base_url, str(user.user_id), created.key.api_key, seed.hex()],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [["Deposit"], user.user_id]
    await kg.keys.delete(OPERATOR, user.user_id, created.key.api_key)


def test_without_cryptography_hmac_works_and_ed25519_names_the_extra() -> None:
    code = """
import importlib.abc, sys
class NoCryptography(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "cryptography":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoCryptography())
import keygate
from keygate.sdk.ed25519 import Ed25519Unavailable
print(keygate.Client("http://kg", 42, "8d4f1a2b3c5e6f708192a3b4c5d6e7f8", "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c").signed_headers("2277045681")["Signature"])
try:
    keygate.Client("http://kg", 42, "k", private_key=b"x" * 32)
except Ed25519Unavailable as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa"
    assert "pip install 'keygate[ed25519]'" in lines[1]
