"""Password rules and hashing (Argon2id, argon2-cffi's RFC 9106 low-memory profile)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from keygate.domain.errors import InvalidRequest

MIN_LENGTH = 10
MAX_LENGTH = 256
_hasher = PasswordHasher()  # argon2id by default

# A hash of a random password, verified against when the user does not exist, so that an unknown
# user costs the same time as a wrong password. Hashing takes a good part of a second, so it is not
# done at import (every CLI command would pay it): ``dummy_hash()`` makes it once, on first use, and
# a server makes it at start-up (``Keygate.start_background``), before its first sign-in.
_dummy_hash: str | None = None


def dummy_hash() -> str:
    """The hash an unknown user's password is checked against; made on the first call, then cached."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("keygate-dummy-password-for-timing")
    return _dummy_hash


def check_password_policy(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise InvalidRequest(f"Password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise InvalidRequest(f"Password must be at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash``. ``None`` (no such user) does the same work against
    the dummy hash and is False: an unknown username costs what a wrong password costs."""
    if stored_hash is None:
        _verify(dummy_hash(), password)
        return False
    return _verify(stored_hash, password)


def _verify(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)
