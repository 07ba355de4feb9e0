"""Sessions: opaque tokens, stored only as a hash, with idle and absolute expiry.

A token is ``<issue time>-<GUID>``: eight hex digits of the Unix time it was issued, then 128 random
bits in the GUID shape APEX clients know. Its stored form (``hash_token``) keeps the eight-digit time
in front of the SHA-256 of the whole token, so new sessions land at the end of the database index
instead of at a random place in it: on SQLite that made writing a session row about five times
cheaper once the table held a few hundred thousand rows (a random key dirties a different index
page for almost every row). The time is not secret; the 128 random bits are what a guesser faces,
and the stored form keeps 224 bits of the hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta
from enum import Enum
from typing import NamedTuple

from keygate.domain.permissions import Permission

MAX_TOKEN_LENGTH = 200


class SessionKind(str, Enum):
    PASSWORD = "password"  # signed in with username and password (and 2FA if enrolled)
    KEY = "key"  # made by AuthenticateUser with an API key signature
    PENDING_2FA = "pending2fa"  # password accepted, TOTP code still owed
    OPERATOR = "operator"  # never stored: the principal of the `keygate` command on the server's machine


TOKEN_LENGTH = 45  # "6749a3f1-" and a GUID
ISSUED_SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # as new_token() makes them


def new_token(issued_at: float) -> str:
    """The issue time (Unix seconds, eight hex digits), then 128 random bits in the GUID shape."""
    h = secrets.token_hex(16)
    return f"{int(issued_at) & 0xFFFFFFFF:08x}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def session_label(token_hash: str) -> str:
    """What an operator is shown of a session (the console's listing and notices): 12 hex digits of
    the stored hash after its issue-time prefix. The first 12 characters would be that prefix and
    only 4 digits of hash: the same for every session issued in one second but for those 4, so two
    sessions on one page of 50 looked alike about once in 26 pages. Never the token itself."""
    return token_hash[8:20]


def hash_token(token: str) -> str:
    """The stored form of a token: 64 characters, never the token itself.

    A token of ours keeps its time prefix (ordered inserts, see the module docstring) before 56 hex
    digits of its SHA-256; any other string (a token from before the prefix, or a guess) is its plain
    SHA-256. The two forms cannot be confused short of a SHA-256 preimage.
    """
    digest = hashlib.sha256(token.encode()).hexdigest()
    if len(token) == TOKEN_LENGTH and token[8] == "-":
        return token[:8] + digest[:56]
    return digest


class Session(NamedTuple):
    """One session. Immutable; a ``NamedTuple`` rather than a frozen dataclass because one is made
    for every ``AuthenticateUser``, and a frozen dataclass takes about ten times as long to build."""

    token_hash: str
    user_id: int
    kind: SessionKind
    permissions: frozenset[Permission]
    api_key: str | None
    client_ip: str | None
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime  # absolute end, whatever the activity
    key_serial: int | None = None  # a key session: the serial of the key's secret that made it

    def expired(self, now: datetime, idle: timedelta) -> bool:
        return now >= self.expires_at or now >= self.last_seen_at + idle

    def touched(self, now: datetime) -> "Session":
        return self._replace(last_seen_at=now)
