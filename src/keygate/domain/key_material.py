"""Key types and the one place a signature is checked against a key's material.

A key is of one of two types:

* ``hmac`` (the default, APEX's): keygate holds the secret (sealed) and checks HMAC-SHA256 with it;
* ``ed25519``: keygate holds only the raw 32-byte public key, which can verify but never sign.

``verify(material, message, signature)`` is the single entry point that APEX signatures and
signature v2 both call: constant-time HMAC-SHA256 comparison for ``hmac``, Ed25519 verification
(RFC 8032, through ``cryptography``) for ``ed25519``. A ``KeyMaterial`` is prepared once per key (the
HMAC key schedule, the parsed public key) and then checks any number of messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from enum import Enum

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keygate.domain.errors import InvalidRequest

PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
MAX_PUBLIC_KEY_TEXT = 1000  # a PEM public key is about 113 characters; anything far longer is refused unread

_HEX = re.compile(r"[0-9a-fA-F]+")
_B64 = re.compile(r"[A-Za-z0-9+/\-_]+={0,2}")


class KeyType(str, Enum):
    HMAC = "hmac"
    ED25519 = "ed25519"


def parse_key_type(value: object) -> KeyType:
    """``KeyType`` as a request gives it: absent means ``hmac``."""
    if value is None or value == "":
        return KeyType.HMAC
    if isinstance(value, str):
        try:
            return KeyType(value.strip().lower())
        except ValueError:
            pass
    raise InvalidRequest('KeyType must be "hmac" or "ed25519"')


class KeyMaterial:
    """What checks signatures of one key: an HMAC secret, or an Ed25519 public key. Build with
    ``hmac_material`` or ``ed25519_material``; keep one per key for as long as the key is unchanged."""

    __slots__ = ("key_type", "_mac", "_public")

    def __init__(self, key_type: KeyType, mac: "hmac.HMAC | None", public: Ed25519PublicKey | None) -> None:
        self.key_type = key_type
        self._mac = mac
        self._public = public

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (raw bytes, already decoded) signs ``message`` under this key."""
        if self._mac is not None:
            mac = self._mac.copy()
            mac.update(message)
            return hmac.compare_digest(mac.digest(), signature)
        assert self._public is not None
        if len(signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            self._public.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def sign_hmac(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` (hmac keys only; an Ed25519 public key cannot sign)."""
        assert self._mac is not None, "only an hmac key signs"
        mac = self._mac.copy()
        mac.update(message)
        return mac.digest()


def hmac_material(secret: str | bytes) -> KeyMaterial:
    key = secret.encode() if isinstance(secret, str) else secret
    return KeyMaterial(KeyType.HMAC, hmac.new(key, digestmod=hashlib.sha256), None)


def ed25519_material(public_key: bytes) -> KeyMaterial:
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise InvalidRequest("An Ed25519 public key is 32 bytes")
    return KeyMaterial(KeyType.ED25519, None, Ed25519PublicKey.from_public_bytes(public_key))


def verify(material: KeyMaterial, message: bytes, signature: bytes) -> bool:
    """The domain's one signature check (APEX and signature v2 alike)."""
    return material.verify(message, signature)


# ----- public keys: parse and format -------------------------------------------------------------
_PUBLIC_KEY_HELP = ("PublicKey must be an Ed25519 public key: its 32 raw bytes in base64, base64url or hex, "
                    "or a PEM (-----BEGIN PUBLIC KEY-----) or DER SubjectPublicKeyInfo")


def _b64(text: str) -> bytes | None:
    if not _B64.fullmatch(text):
        return None
    body = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _from_spki(data: bytes, pem: bool) -> bytes:
    try:
        loaded = serialization.load_pem_public_key(data) if pem else serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidRequest(_PUBLIC_KEY_HELP) from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise InvalidRequest("PublicKey is not an Ed25519 key (only Ed25519 public keys are accepted)")
    return loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(value: object) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given as text (raw key in base64 / base64url / hex,
    or PEM SubjectPublicKeyInfo) or bytes (raw 32 bytes, DER or PEM SubjectPublicKeyInfo).

    A private key (PEM ``PRIVATE KEY``, PKCS#8 DER) is refused with a message that says so; nothing
    of it is kept or echoed.
    """
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        if len(data) > MAX_PUBLIC_KEY_TEXT:
            raise InvalidRequest(_PUBLIC_KEY_HELP)
        if len(data) == PUBLIC_KEY_BYTES:
            return _checked(data)
        if b"PRIVATE KEY" in data:
            raise _private_given()
        if data.lstrip().startswith(b"-----BEGIN"):
            return _from_spki(data, pem=True)
        try:
            return _from_spki(data, pem=False)
        except InvalidRequest:
            if _looks_like_pkcs8(data):
                raise _private_given() from None
            try:
                return parse_public_key(data.decode("ascii"))
            except UnicodeDecodeError:
                raise InvalidRequest(_PUBLIC_KEY_HELP) from None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_PUBLIC_KEY_TEXT:
        raise InvalidRequest(_PUBLIC_KEY_HELP)
    text = value.strip()
    if "PRIVATE KEY" in text:
        raise _private_given()
    if text.startswith("-----BEGIN"):
        return _from_spki(text.encode("ascii", "replace"), pem=True)
    if len(text) == 2 * PUBLIC_KEY_BYTES and _HEX.fullmatch(text):
        return _checked(bytes.fromhex(text))
    raw = _b64(text)
    if raw is None:
        raise InvalidRequest(_PUBLIC_KEY_HELP)
    if len(raw) == PUBLIC_KEY_BYTES:
        return _checked(raw)
    if _looks_like_pkcs8(raw):
        raise _private_given()
    return _from_spki(raw, pem=False)  # base64 of a DER SubjectPublicKeyInfo (a PEM without its lines)


def _looks_like_pkcs8(der: bytes) -> bool:
    try:
        serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _private_given() -> InvalidRequest:
    return InvalidRequest("PublicKey is a private key: send only the public key (keep the private key to yourself)")


def _checked(raw: bytes) -> bytes:
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise InvalidRequest(_PUBLIC_KEY_HELP) from None
    return raw


def format_public_key(raw: bytes) -> str:
    """How keygate stores and shows a public key: the 32 raw bytes, standard base64 (44 characters)."""
    return base64.b64encode(raw).decode("ascii")


def decode_stored_public_key(text: str) -> bytes:
    return base64.b64decode(text)


def public_key_pem(raw: bytes) -> str:
    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def fingerprint(raw: bytes) -> str:
    """``SHA256:`` and the unpadded base64 of the SHA-256 of the raw public key (OpenSSH's style):
    what listings and the audit trail show of a public key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")


# ----- signatures as clients send them ------------------------------------------------------------
def decode_signature(key_type: KeyType, text: str) -> bytes | None:
    """The raw bytes of an APEX ``Signature`` for a key of ``key_type``, or None if its shape is not
    one that type accepts (so it simply does not match).

    ``hmac``: exactly 64 hexadecimal characters (either case), as APEX has it.
    ``ed25519``: the 64-byte signature as 128 hexadecimal characters, or base64 (standard or
    URL-safe alphabet, padding optional: 86 or 88 characters).
    """
    if key_type is KeyType.HMAC:
        if len(text) != 64:
            return None
        try:
            raw = bytes.fromhex(text)  # (it skips spaces between digits: such a text gives fewer bytes, refused below)
        except ValueError:
            return None
        return raw if len(raw) == 32 else None
    if len(text) == 2 * ED25519_SIGNATURE_BYTES and _HEX.fullmatch(text):
        return bytes.fromhex(text)
    if len(text) in (86, 88):
        decoded = _b64(text)
        if decoded is not None and len(decoded) == ED25519_SIGNATURE_BYTES:
            return decoded
    return None


def signature_shape_ok(text: str) -> bool:
    """Whether ``text`` has the shape of a signature of some key type (checked before any look-up)."""
    size = len(text)
    if size == 64 or size == 2 * ED25519_SIGNATURE_BYTES:
        return _HEX.fullmatch(text) is not None
    return size in (86, 88) and decode_signature(KeyType.ED25519, text) is not None
