"""Encryption of API secrets (and TOTP seeds) at rest with AES-256-GCM.

A sealed value is ``version(1) | key_id(4) | nonce(12) | ciphertext+tag``. ``key_id`` names the
master key that sealed it, so a master-key rotation can tell old from new rows. The associated data
binds each ciphertext to the row it belongs to (for example the API key), so a ciphertext copied to
another row does not decrypt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
MASTER_KEY_BYTES = 32


class SecretBoxError(Exception):
    """A sealed value could not be opened (wrong master key or tampered data)."""


def key_id_of(master_key: bytes) -> bytes:
    return hashlib.sha256(b"keygate-key-id" + master_key).digest()[:4]


KeyringLoader = Callable[[], tuple[bytes, list[bytes]]]


class SecretBox:
    """Seals under the current master key; opens under the current or any previous one.

    ``loader`` (optional) re-reads the keyring. It is called when a value names a master key this box
    does not know yet, which is how a running server picks up ``keygate rotate-master-key``.
    """

    def __init__(self, master_key: bytes, previous: list[bytes] | None = None, loader: KeyringLoader | None = None) -> None:
        self._loader = loader
        self._set_keys(master_key, previous or [])

    def _set_keys(self, master_key: bytes, previous: list[bytes]) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise ValueError("the master key must be 32 bytes")
        keys = {key_id_of(master_key): AESGCM(master_key)}
        for old in previous:
            keys.setdefault(key_id_of(old), AESGCM(old))
        self._current_id = key_id_of(master_key)
        self._keys = keys

    def reload(self) -> bool:
        """Re-read the keyring; return whether the current master key changed."""
        if self._loader is None:
            return False
        before = self._current_id
        master, previous = self._loader()
        self._set_keys(master, previous)
        return self._current_id != before

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
        if aes is None and self._loader is not None:
            self.reload()
            aes = self._keys.get(bytes(sealed[1:5]))
        if aes is None:
            raise SecretBoxError("sealed under an unknown master key")
        try:
            return aes.decrypt(bytes(sealed[5:17]), bytes(sealed[17:]), context.encode()).decode()
        except InvalidTag:
            raise SecretBoxError("sealed value failed authentication") from None

    def sealed_with_current(self, sealed: bytes) -> bool:
        return bytes(sealed[1:5]) == self._current_id
