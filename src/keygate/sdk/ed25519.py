"""Ed25519 signing for the SDK: the APEX signature of an ``ed25519`` key, made with its private key.

``Signature = base64(Ed25519-sign(private_key, Nonce + UserId + APIKey))`` (the UTF-8 bytes of the three
strings concatenated, as for HMAC keys). Ed25519 is deterministic: the same key and message always give
the same signature.

Needs the ``cryptography`` package, which the SDK's base install does not bring (it is ``httpx`` only):
``pip install 'keygate[ed25519]'``. It is imported only when an Ed25519 key is loaded, so HMAC clients
never need it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol

from keygate.domain.signature import signing_message

EXTRA_HINT = "pip install 'keygate[ed25519]'"


class Ed25519Unavailable(RuntimeError):
    """Ed25519 signing was asked for where ``cryptography`` is not installed."""


class PrivateKeyError(ValueError):
    """The given private key is not an Ed25519 private key in a form the SDK reads."""


class _Signing(Protocol):
    def sign(self, data: bytes) -> bytes: ...


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise Ed25519Unavailable(f"Ed25519 keys need the 'cryptography' package: {EXTRA_HINT}") from None
    return serialization, ed25519


_FORMS = ("a PKCS#8 PEM (-----BEGIN PRIVATE KEY-----), the 32-byte seed (raw bytes, hex or base64), "
          "or the JSON Web Key the console exports")


class Ed25519Signer:
    """An Ed25519 private key, loaded once, that signs APEX messages."""

    __slots__ = ("_key",)

    def __init__(self, private_key: str | bytes | Any) -> None:
        serialization, ed25519 = _crypto()
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            self._key: _Signing = private_key
            return
        self._key = _load(private_key, serialization, ed25519)

    def __repr__(self) -> str:  # never show the key
        return "Ed25519Signer(<private key>)"

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def apex_signature(self, nonce: str, user_id: str | int, api_key: str, encoding: str = "base64") -> str:
        """The ``Signature`` of an APEX request: base64 (default), ``base64url`` (unpadded) or ``hex``."""
        raw = self.sign(signing_message(nonce, user_id, api_key))
        if encoding == "base64":
            return base64.b64encode(raw).decode("ascii")
        if encoding == "base64url":
            return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        if encoding == "hex":
            return raw.hex()
        raise ValueError("encoding must be base64, base64url or hex")

    def raw_private_key(self) -> bytes:
        """The 32-byte private key (seed), for Signature v2 (``keygate.domain.httpsig.sign_request``)."""
        serialization, _ = _crypto()
        return bytes(self._key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))

    def public_key_base64(self) -> str:
        """The raw 32-byte public key, base64: what ``AddUserAPIKey``'s ``PublicKey`` takes."""
        serialization, _ = _crypto()
        public = self._key.public_key()  # type: ignore[attr-defined]
        return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode("ascii")


def _load(value: object, serialization: Any, ed25519: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return _from_jwk(text, ed25519)
        if text.startswith("-----BEGIN"):
            return _from_pem(text.encode("ascii", "replace"), serialization, ed25519)
        seed: bytes | None = None
        if len(text) == 64:
            try:
                seed = bytes.fromhex(text)
            except ValueError:
                seed = None
        if seed is None:
            try:
                seed = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise PrivateKeyError(f"The private key must be {_FORMS}") from None
        if len(seed) != 32:
            try:  # base64 of a PKCS#8 DER
                return _from_der(seed, serialization, ed25519)
            except PrivateKeyError:
                raise PrivateKeyError(f"The private key must be {_FORMS}") from None
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        if len(data) == 32:
            return ed25519.Ed25519PrivateKey.from_private_bytes(data)
        if data.lstrip().startswith(b"-----BEGIN"):
            return _from_pem(data, serialization, ed25519)
        try:
            return _from_der(data, serialization, ed25519)
        except PrivateKeyError:
            try:
                return _load(data.decode("ascii"), serialization, ed25519)
            except UnicodeDecodeError:
                raise PrivateKeyError(f"The private key must be {_FORMS}") from None
    raise PrivateKeyError(f"The private key must be {_FORMS}")


def _checked(key: object, ed25519: Any) -> Any:
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PrivateKeyError("The private key is not an Ed25519 key")
    return key


def _from_pem(data: bytes, serialization: Any, ed25519: Any) -> Any:
    if b"PRIVATE KEY" not in data:
        raise PrivateKeyError("That is a public key: signing needs the private key")
    try:
        return _checked(serialization.load_pem_private_key(data, password=None), ed25519)
    except (ValueError, TypeError):
        raise PrivateKeyError(f"The private key must be {_FORMS} (unencrypted)") from None


def _from_der(data: bytes, serialization: Any, ed25519: Any) -> Any:
    try:
        return _checked(serialization.load_der_private_key(data, password=None), ed25519)
    except (ValueError, TypeError):
        raise PrivateKeyError(f"The private key must be {_FORMS}") from None


def _from_jwk(text: str, ed25519: Any) -> Any:
    """``{"kty": "OKP", "crv": "Ed25519", "d": <base64url seed>, ...}`` (RFC 8037), as WebCrypto exports it;
    also the console's download, which holds the JWK under ``PrivateKeyJwk``."""
    try:
        jwk = json.loads(text)
    except ValueError:
        raise PrivateKeyError(f"The private key must be {_FORMS}") from None
    if isinstance(jwk, dict) and isinstance(jwk.get("PrivateKeyJwk"), dict):
        jwk = jwk["PrivateKeyJwk"]
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("d"), str):
        raise PrivateKeyError("The JSON is not an Ed25519 private JSON Web Key (kty OKP, crv Ed25519, d)")
    d = jwk["d"]
    try:
        seed = base64.urlsafe_b64decode(d + "=" * (-len(d) % 4))
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise PrivateKeyError("The JSON Web Key's d is not a 32-byte Ed25519 seed")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def generate_pem() -> tuple[str, str]:
    """A new Ed25519 key pair: (PKCS#8 PEM private key, raw public key in base64)."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode("ascii")
    return pem, Ed25519Signer(key).public_key_base64()
