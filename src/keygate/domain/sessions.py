"""Sessions: opaque tokens, stored only as their SHA-256, with idle and absolute expiry."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import Enum

from keygate.domain.permissions import Permission

MAX_TOKEN_LENGTH = 200


class SessionKind(str, Enum):
    PASSWORD = "password"  # signed in with username and password (and 2FA if enrolled)
    KEY = "key"  # made by AuthenticateUser with an API key signature
    PENDING_2FA = "pending2fa"  # password accepted, TOTP code still owed


def new_token() -> str:
    """128 random bits, printed in the GUID shape APEX clients are used to."""
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    token_hash: str
    user_id: int
    kind: SessionKind
    permissions: frozenset[Permission]
    api_key: str | None
    client_ip: str | None
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime  # absolute end, whatever the activity

    def expired(self, now: datetime, idle: timedelta) -> bool:
        return now >= self.expires_at or now >= self.last_seen_at + idle

    def touched(self, now: datetime) -> "Session":
        return replace(self, last_seen_at=now)
