"""Loading (or creating, on first start) the 32-byte master key that seals every secret."""

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


def write_key_file(path: Path, raw: bytes) -> None:
    """Create the file with mode 0600 from the start, so the key is never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_master_key(raw) + "\n")
    os.replace(tmp, path)


def load_master_key(env_value: str | None, path: Path, create: bool) -> tuple[bytes, bool]:
    """Return ``(key, created)``. The environment variable wins over the file."""
    if env_value:
        return decode_master_key(env_value), False
    if path.exists():
        mode = path.stat().st_mode & 0o077
        if mode:
            raise MasterKeyError(f"{path} is readable by other users; run: chmod 600 {path}")
        return decode_master_key(path.read_text()), False
    if not create:
        raise MasterKeyError(f"no master key: set KEYGATE_MASTER_KEY or create {path} (keygate init)")
    raw = os.urandom(MASTER_KEY_BYTES)
    write_key_file(path, raw)
    return raw, True
