"""Passwords: Argon2id hashes and the length policy."""

import pytest

from keygate.domain.errors import InvalidRequest
from keygate.domain.passwords import MAX_LENGTH, MIN_LENGTH, check_password_policy, hash_password, verify_password


def test_hash_is_argon2id_and_verifies() -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert "correct horse battery" not in stored
    assert verify_password(stored, "correct horse battery")
    assert not verify_password(stored, "correct horse batterz")


def test_same_password_hashes_differently_each_time() -> None:
    assert hash_password("a long password") != hash_password("a long password")


def test_garbage_hash_does_not_verify() -> None:
    assert verify_password("not-a-hash", "whatever long") is False


def test_policy_bounds() -> None:
    check_password_policy("x" * MIN_LENGTH)
    check_password_policy("x" * MAX_LENGTH)
    for bad in ("x" * (MIN_LENGTH - 1), "x" * (MAX_LENGTH + 1), "", None):
        with pytest.raises(InvalidRequest):
            check_password_policy(bad)  # type: ignore[arg-type]
