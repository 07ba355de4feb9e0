"""Session tokens and expiry rules."""

import hashlib
import re
from datetime import datetime, timedelta, timezone

from keygate.domain.sessions import Session, SessionKind, hash_token, new_token, session_label

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _session(created: datetime = T0, max_age: timedelta = timedelta(hours=24)) -> Session:
    return Session(hash_token("t"), 1, SessionKind.KEY, frozenset(), "k", "127.0.0.1", created, created, created + max_age)


def test_token_carries_at_least_128_random_bits_after_its_issue_time() -> None:
    tokens = {new_token(T0.timestamp()) for _ in range(2000)}
    assert len(tokens) == 2000
    for token in list(tokens)[:50]:
        prefix, guid = token.split("-", 1)
        assert prefix == f"{int(T0.timestamp()):08x}"
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", guid), token
    # Every hex position of the GUID varies: no fixed version nibble eating into the 128 bits.
    for i in range(36):
        if i in (8, 13, 18, 23):
            continue
        assert len({t[9 + i] for t in tokens}) > 8, i


def test_sessions_issued_in_one_second_have_labels_of_their_own() -> None:
    """The console shows a session by ``session_label``: 12 hex digits of its hash, not of the issue
    time every session of that second shares."""
    hashes = [hash_token(new_token(T0.timestamp())) for _ in range(5000)]
    labels = {session_label(h) for h in hashes}
    assert len(labels) == 5000
    assert all(re.fullmatch(r"[0-9a-f]{12}", label) for label in labels)
    assert len({h[:12] for h in hashes}) < 5000  # what the console showed before: some looked alike


def test_stored_form_is_a_hash_not_the_token() -> None:
    token = new_token(T0.timestamp())
    stored = hash_token(token)
    assert len(stored) == 64
    assert stored == token[:8] + hashlib.sha256(token.encode()).hexdigest()[:56]
    assert token[9:] not in stored and token[9:].replace("-", "") not in stored


def test_stored_forms_sort_by_issue_time() -> None:
    """New rows go to the end of the session index, not to a random page of it."""
    times = [T0.timestamp() + n for n in (0, 1, 59, 3600, 86400 * 400)]
    stored = [hash_token(new_token(t)) for t in times]
    assert stored == sorted(stored)


def test_other_strings_are_stored_as_their_plain_sha256() -> None:
    """Tokens issued before the time prefix (plain GUIDs) stay valid; guesses hash like any string."""
    for token in ("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "x" * 45, "anything"):
        assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()


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
