"""Key types and the domain's one signature check: RFC 8032's Ed25519 test vector, HMAC-SHA256, the
public-key formats keygate accepts, and the signature encodings of APEX for each key type."""

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keygate.domain.errors import InvalidRequest
from keygate.domain.key_material import (
    KeyType,
    decode_signature,
    ed25519_material,
    fingerprint,
    format_public_key,
    hmac_material,
    parse_key_type,
    parse_public_key,
    public_key_pem,
    signature_shape_ok,
    verify,
)
from keygate.domain.signature import signing_message

# RFC 8032, section 7.1, TEST 1 (an empty message)
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")

# The README's APEX recipe: the RFC's key signs Nonce + UserId + APIKey of the HMAC test vector.
NONCE, USER_ID, API_KEY = "2277045681", 42, "8d4f1a2b3c5e6f708192a3b4c5d6e7f8"
README_SIGNATURE_B64 = "vprmf88ZxIed6Jy2sI+tx/S74F8bDDQTc32b4h2tEhhFzxeyMLyr4Ni/YfkCvz4Li9cf0hOPEVHhF+Fz1UD1Dg=="


def test_rfc8032_test_1_verifies() -> None:
    material = ed25519_material(RFC_PUBLIC)
    assert verify(material, b"", RFC_SIGNATURE)
    assert Ed25519PrivateKey.from_private_bytes(RFC_SEED).public_key().public_bytes_raw() == RFC_PUBLIC


def test_rfc8032_test_1_refused_when_anything_differs() -> None:
    material = ed25519_material(RFC_PUBLIC)
    assert not verify(material, b"x", RFC_SIGNATURE)
    assert not verify(material, b"", RFC_SIGNATURE[:-1] + bytes([RFC_SIGNATURE[-1] ^ 1]))
    assert not verify(material, b"", RFC_SIGNATURE[:32])  # wrong length: no match, no exception
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not verify(ed25519_material(other), b"", RFC_SIGNATURE)


def test_hmac_material_is_hmac_sha256() -> None:
    secret = "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c"
    message = signing_message(NONCE, USER_ID, API_KEY)
    mac = hmac.digest(secret.encode(), message, "sha256")
    assert mac.hex() == "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa"  # the APEX vector
    material = hmac_material(secret)
    assert material.key_type is KeyType.HMAC
    assert verify(material, message, mac)
    assert not verify(material, message + b"0", mac)
    assert not verify(material, message, mac[:-1])


def test_apex_recipe_of_the_readme() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC_SEED)
    signature = key.sign(signing_message(NONCE, USER_ID, API_KEY))
    assert base64.b64encode(signature).decode() == README_SIGNATURE_B64
    assert verify(ed25519_material(RFC_PUBLIC), b"2277045681428d4f1a2b3c5e6f708192a3b4c5d6e7f8", signature)


def test_public_key_formats() -> None:
    private = Ed25519PrivateKey.from_private_bytes(RFC_SEED)
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    forms: list[object] = [
        RFC_PUBLIC.hex(), RFC_PUBLIC.hex().upper(), base64.b64encode(RFC_PUBLIC).decode(),
        base64.urlsafe_b64encode(RFC_PUBLIC).decode().rstrip("="), base64.b64encode(RFC_PUBLIC).decode().rstrip("="),
        pem.decode(), "  " + pem.decode() + "\n", pem, der, RFC_PUBLIC, base64.b64encode(der).decode(),
    ]
    for form in forms:
        assert parse_public_key(form) == RFC_PUBLIC, form
    assert public_key_pem(RFC_PUBLIC).encode() == pem
    assert format_public_key(RFC_PUBLIC) == base64.b64encode(RFC_PUBLIC).decode()


@pytest.mark.parametrize("bad", [None, "", "   ", 42, "zz" * 32, "ab" * 31, base64.b64encode(b"x" * 31).decode(),
                                 "-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----", "x" * 5000, b"\x00" * 7])
def test_not_a_public_key(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="PublicKey"):
        parse_public_key(bad)


def test_other_algorithms_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(InvalidRequest, match="not an Ed25519 key"):
        parse_public_key(pem)


def test_private_key_refused_with_a_message_that_says_so() -> None:
    private = Ed25519PrivateKey.from_private_bytes(RFC_SEED)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for form in (pem.decode(), pem, der, base64.b64encode(der).decode()):
        with pytest.raises(InvalidRequest, match="private key") as caught:
            parse_public_key(form)
        assert RFC_SEED.hex() not in str(caught.value) and base64.b64encode(der).decode() not in str(caught.value)


def test_fingerprint_is_sha256_of_the_raw_key() -> None:
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(RFC_PUBLIC).digest()).decode().rstrip("=")
    assert fingerprint(RFC_PUBLIC) == expected
    assert RFC_PUBLIC.hex() not in expected


def test_key_type() -> None:
    assert parse_key_type(None) is KeyType.HMAC
    assert parse_key_type("") is KeyType.HMAC
    assert parse_key_type("Ed25519") is KeyType.ED25519
    for bad in ("rsa", 1, ["hmac"]):
        with pytest.raises(InvalidRequest, match="KeyType"):
            parse_key_type(bad)


def test_signature_encodings_per_key_type() -> None:
    signature = RFC_SIGNATURE
    for text in (signature.hex(), signature.hex().upper(), base64.b64encode(signature).decode(),
                 base64.b64encode(signature).decode().rstrip("="), base64.urlsafe_b64encode(signature).decode(),
                 base64.urlsafe_b64encode(signature).decode().rstrip("=")):
        assert decode_signature(KeyType.ED25519, text) == signature, text
        assert decode_signature(KeyType.HMAC, text) is None
        assert signature_shape_ok(text)
    mac = "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa"
    assert decode_signature(KeyType.HMAC, mac) == bytes.fromhex(mac)
    assert decode_signature(KeyType.ED25519, mac) is None  # an hmac-shaped signature never matches an ed25519 key
    for bad in ("", "g" * 64, "a" * 63, "a" * 127, "*" * 88, base64.b64encode(b"x" * 63).decode()):
        assert not signature_shape_ok(bad), bad


def test_the_readme_shows_this_vector() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for value in (RFC_SEED.hex(), base64.b64encode(RFC_PUBLIC).decode(), README_SIGNATURE_B64,
                  signing_message(NONCE, USER_ID, API_KEY).decode()):
        assert f"`{value}`" in readme, value
