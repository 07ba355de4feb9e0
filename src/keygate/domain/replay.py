"""Replay protection, chosen per key.

The APEX signature covers only ``Nonce + UserId + APIKey``, so a captured header set would be good
forever. Each key picks how its nonces are checked:

- ``compatible``: any nonce, as APEX does (the seed tells users to reuse the nonce shown at creation).
- ``increasing``: the nonce, read as an unsigned 64-bit integer, must exceed the last one accepted
  for the key (ccxt and most SDKs send a millisecond timestamp).
- ``unique``: a nonce may be used once per key within a window (clients that send random nonces).
- ``window`` (the default for new keys): every real client's nonces, and every replay refused. The
  key remembers its last ``KEYGATE_NONCE_WINDOW_SIZE`` accepted nonces and a *floor*; a nonce is
  accepted if and only if it is not among them and (if numeric) above the floor. Rules:

  1. A key starts *increasing-style*: when it must forget a nonce to stay within its bound, it
     forgets its smallest one and raises the floor to it, so a forgotten nonce can never come back:
     for millisecond timestamps and counters, in order or out of order (a nonce may arrive after up
     to ``KEYGATE_NONCE_WINDOW_SIZE`` newer ones), every replay is refused forever.
  2. The first accepted nonce that is not a number, or lies more than ``SPREAD_GAP`` below the highest
     accepted one (a random nonce: one APEX SDK sends random numbers below 10^9), makes the key
     *random-style*, for good. It cannot be forged: only an accepted, so correctly signed, request
     changes the state, and the nonce is one the key provably never accepted (not remembered, above
     the floor). A random-style key forgets its oldest nonces instead, and any nonce after
     ``KEYGATE_UNIQUE_NONCE_WINDOW_SECONDS``; the floor stays where it was. Its replay protection
     therefore covers the last ``KEYGATE_NONCE_WINDOW_SIZE`` nonces within that time: a header set
     older than both may be accepted once more. Clients that need more sign whole requests (v2).

  Memory per key: at most ``KEYGATE_NONCE_WINDOW_SIZE`` nonces (each at most 128 characters), the
  floor, the highest nonce and one flag.
"""

from __future__ import annotations

from enum import Enum

from keygate.domain.errors import InvalidRequest

U64_MAX = 2**64 - 1
SPREAD_GAP = 1_000_000  # a nonce this far below the highest is a random one (timestamps reorder by far less)
FAR_FUTURE_SECONDS = 100 * 365 * 86400  # "never forgotten by age" (increasing-style window entries)
U64_DIGITS = 20


class ReplayMode(str, Enum):
    COMPATIBLE = "compatible"
    INCREASING = "increasing"
    UNIQUE = "unique"
    WINDOW = "window"

    def __str__(self) -> str:
        return self.value


def parse_replay_mode(value: object) -> ReplayMode:
    if isinstance(value, str):
        try:
            return ReplayMode(value.strip().lower())
        except ValueError:
            pass
    raise InvalidRequest("ReplayMode must be one of: " + ", ".join(m.value for m in ReplayMode))


def nonce_as_u64(nonce: str) -> int | None:
    """The nonce as an unsigned 64-bit integer, or ``None`` if it is not one."""
    if not nonce.isdigit() or not nonce.isascii() or len(nonce) > U64_DIGITS:
        return None
    value = int(nonce)
    return value if value <= U64_MAX else None


def sortable(value: int) -> str:
    """Zero-padded to 20 digits, so string order is numeric order (in SQL and in Redis alike)."""
    return f"{value:0{U64_DIGITS}d}"
