"""The APEX request signature.

``Signature = hex(HMAC-SHA256(key=APISecret, msg=Nonce + UserId + APIKey))``. The three strings are
concatenated with nothing between them; either hex case is accepted on the way in.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def signing_message(nonce: str, user_id: str | int, api_key: str) -> bytes:
    return f"{nonce}{user_id}{api_key}".encode()


def compute_signature(secret: str, nonce: str, user_id: str | int, api_key: str) -> str:
    """Return the lowercase hex signature a client sends."""
    return hmac.digest(secret.encode(), signing_message(nonce, user_id, api_key), "sha256").hex()


def is_well_formed(signature: str) -> bool:
    return _HEX64.fullmatch(signature) is not None


def signature_matches(secret: str, nonce: str, user_id: str | int, api_key: str, signature: str) -> bool:
    """Constant-time check of a client's signature; malformed input simply does not match."""
    return SigningKey(secret).matches(nonce, user_id, api_key, signature)


class SigningKey:
    """A secret made ready for many checks.

    HMAC hashes the key into two SHA-256 states before it hashes any message; this object does that
    once and copies the prepared state for each message, which is what a key that signs every request
    wants. Keep one per secret, for as long as the secret itself is kept.
    """

    __slots__ = ("_prepared",)

    def __init__(self, secret: str) -> None:
        self._prepared = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def sign(self, nonce: str, user_id: str | int, api_key: str) -> bytes:
        mac = self._prepared.copy()
        mac.update(signing_message(nonce, user_id, api_key))
        return mac.digest()

    def matches(self, nonce: str, user_id: str | int, api_key: str, signature: str) -> bool:
        """Constant-time check of a client's signature; malformed input simply does not match."""
        try:
            given = bytes.fromhex(signature)
        except ValueError:
            return False
        return hmac.compare_digest(self.sign(nonce, user_id, api_key), given)
