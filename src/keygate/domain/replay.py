"""Replay protection, chosen per key.

The APEX signature covers only ``Nonce + UserId + APIKey``, so a captured header set would be good
forever. Each key picks how its nonces are checked:

- ``compatible``: any nonce, as APEX does (the seed tells users to reuse the nonce shown at creation).
- ``increasing``: the nonce, read as an unsigned 64-bit integer, must exceed the last one accepted
  for the key (ccxt and most SDKs send a millisecond timestamp).
- ``unique``: a nonce may be used once per key within a window (clients that send random nonces).
"""

from __future__ import annotations

from enum import Enum

from keygate.domain.errors import InvalidRequest

U64_MAX = 2**64 - 1
U64_DIGITS = 20


class ReplayMode(str, Enum):
    COMPATIBLE = "compatible"
    INCREASING = "increasing"
    UNIQUE = "unique"

    def __str__(self) -> str:
        return self.value


def parse_replay_mode(value: object) -> ReplayMode:
    if isinstance(value, str):
        try:
            return ReplayMode(value.strip().lower())
        except ValueError:
            pass
    raise InvalidRequest("ReplayMode must be one of: compatible, increasing, unique")


def nonce_as_u64(nonce: str) -> int | None:
    """The nonce as an unsigned 64-bit integer, or ``None`` if it is not one."""
    if not nonce.isdigit() or not nonce.isascii() or len(nonce) > U64_DIGITS:
        return None
    value = int(nonce)
    return value if value <= U64_MAX else None


def sortable(value: int) -> str:
    """Zero-padded to 20 digits, so string order is numeric order (in SQL and in Redis alike)."""
    return f"{value:0{U64_DIGITS}d}"
