"""Encryption of API secrets (and TOTP seeds) at rest with AES-256-GCM.

A sealed value is ``version(1) | key_id(4) | nonce(12) | ciphertext+tag``. ``key_id`` names the
master key that sealed it, so a master-key rotation can tell old from new rows. The associated data
binds each ciphertext to the row it belongs to (for example the API key), so a ciphertext copied to
another row does not decrypt.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
MASTER_KEY_BYTES = 32


class SecretBoxError(Exception):
    """A sealed value could not be opened (wrong master key or tampered data)."""


def key_id_of(master_key: bytes) -> bytes:
    return hashlib.sha256(b"keygate-key-id" + master_key).digest()[:4]


class SecretBox:
    def __init__(self, master_key: bytes, previous: list[bytes] | None = None) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise ValueError("the master key must be 32 bytes")
        self._current_id = key_id_of(master_key)
        self._keys = {self._current_id: AESGCM(master_key)}
        for old in previous or []:
            self._keys.setdefault(key_id_of(old), AESGCM(old))

    @property
    def current_key_id(self) -> bytes:
        return self._current_id

    def seal(self, plaintext: str, context: str) -> bytes:
        nonce = os.urandom(12)
        ct = self._keys[self._current_id].encrypt(nonce, plaintext.encode(), context.encode())
        return bytes([VERSION]) + self._current_id + nonce + ct

    def open(self, sealed: bytes, context: str) -> str:
        if len(sealed) < 1 + 4 + 12 + 16 or sealed[0] != VERSION:
            raise SecretBoxError("unknown sealed format")
        aes = self._keys.get(bytes(sealed[1:5]))
        if aes is None:
            raise SecretBoxError("sealed under an unknown master key")
        try:
            return aes.decrypt(bytes(sealed[5:17]), bytes(sealed[17:]), context.encode()).decode()
        except InvalidTag:
            raise SecretBoxError("sealed value failed authentication") from None

    def sealed_with_current(self, sealed: bytes) -> bool:
        return bytes(sealed[1:5]) == self._current_id
