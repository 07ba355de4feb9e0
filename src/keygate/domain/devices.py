"""Device tokens (OWASP's "device cookie"): proof that a browser or client signed in as a user before.

A token is ``v1.<user_id>.<device_id>.<mac>``, the MAC being HMAC-SHA256 under a server key derived
from the master key. It holds no secret of the user and grants nothing by itself: it only lets its
holder's password attempts for that user be counted on their own, apart from guesses made elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import NamedTuple

MAX_TOKEN_LENGTH = 120


class Device(NamedTuple):
    user_id: int
    device_id: str


def device_key(master_key: bytes) -> bytes:
    return hmac.new(master_key, b"keygate-device-token-v1", hashlib.sha256).digest()


def _mac(key: bytes, user_id: int, device_id: str) -> str:
    raw = hmac.new(key, f"{user_id}.{device_id}".encode(), hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(raw).decode()


def issue_device_token(key: bytes, user_id: int, device_id: str | None = None) -> str:
    device_id = device_id or secrets.token_urlsafe(12)
    return f"v1.{user_id}.{device_id}.{_mac(key, user_id, device_id)}"


def read_device_token(key: bytes, token: object) -> Device | None:
    """The device a token names, or ``None`` when it is absent, malformed or not signed by us."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit() or not parts[2] or len(parts[1]) > 10:
        return None
    user_id, device_id = int(parts[1]), parts[2]
    if not hmac.compare_digest(_mac(key, user_id, device_id).encode(), parts[3].encode()):
        return None
    return Device(user_id, device_id)
