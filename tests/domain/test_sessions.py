"""Session tokens and expiry rules."""

import hashlib
import re
from datetime import datetime, timedelta, timezone

from keygate.domain.sessions import Session, SessionKind, hash_token, new_token

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _session(created: datetime = T0, max_age: timedelta = timedelta(hours=24)) -> Session:
    return Session(hash_token("t"), 1, SessionKind.KEY, frozenset(), "k", "127.0.0.1", created, created, created + max_age)


def test_token_carries_at_least_128_random_bits() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    for token in list(tokens)[:50]:
        digits = token.replace("-", "")
        assert re.fullmatch(r"[0-9a-f]{32}", digits), token
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", token)
    # Every hex position varies: no fixed version nibble eating into the 128 bits.
    for i in range(36):
        if i in (8, 13, 18, 23):
            continue
        assert len({t[i] for t in tokens}) > 8, i


def test_stored_form_is_the_sha256_not_the_token() -> None:
    token = new_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token not in hash_token(token)


def test_idle_expiry() -> None:
    s = _session()
    idle = timedelta(hours=1)
    assert not s.expired(T0 + timedelta(minutes=59), idle)
    assert s.expired(T0 + timedelta(hours=1), idle)
    touched = s.touched(T0 + timedelta(minutes=50))
    assert not touched.expired(T0 + timedelta(minutes=109), idle)
    assert touched.expired(T0 + timedelta(minutes=110), idle)


def test_absolute_expiry_wins_over_activity() -> None:
    s = _session(max_age=timedelta(hours=2))
    idle = timedelta(hours=1)
    s = s.touched(T0 + timedelta(minutes=119))
    assert not s.expired(T0 + timedelta(minutes=119, seconds=59), idle)
    assert s.expired(T0 + timedelta(hours=2), idle)
