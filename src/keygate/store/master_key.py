"""Loading (or creating, on first start) the 32-byte master key that seals every secret.

The key file is a keyring: one base64 key per line, the current key first, then the previous keys
that ``keygate rotate-master-key`` keeps so that values sealed under them can still be opened.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from keygate.domain.secretbox import MASTER_KEY_BYTES


class MasterKeyError(Exception):
    pass


def decode_master_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError("the master key must be base64 of 32 random bytes") from None
    if len(raw) != MASTER_KEY_BYTES:
        raise MasterKeyError("the master key must be base64 of 32 random bytes")
    return raw


def encode_master_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def write_key_file(path: Path, raw: bytes, previous: list[bytes] | None = None) -> None:
    """Write the keyring atomically, with mode 0600 from the start, so the key is never world-readable."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for key in [raw, *(previous or [])]:
            f.write(encode_master_key(key) + "\n")
    os.replace(tmp, path)


def read_key_file(path: Path) -> tuple[bytes, list[bytes]]:
    if path.stat().st_mode & 0o077:
        raise MasterKeyError(f"{path} is readable by other users; run: chmod 600 {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise MasterKeyError(f"{path} holds no master key")
    return decode_master_key(lines[0]), [decode_master_key(line) for line in lines[1:]]


def load_master_key(env_value: str | None, path: Path, create: bool) -> tuple[bytes, list[bytes], bool]:
    """Return ``(current, previous, created)``. The environment variable wins over the file."""
    if env_value:
        return decode_master_key(env_value), [], False
    if path.exists():
        current, previous = read_key_file(path)
        return current, previous, False
    if not create:
        raise MasterKeyError(f"no master key: set KEYGATE_MASTER_KEY or create {path} (keygate init)")
    raw = os.urandom(MASTER_KEY_BYTES)
    write_key_file(path, raw)
    return raw, [], True
