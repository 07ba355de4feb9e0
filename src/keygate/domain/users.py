"""Users and usernames."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from keygate.domain.errors import InvalidRequest

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{1,63}")
MAX_USER_ID = 2**31 - 1  # the users.user_id column is a 32-bit INTEGER


def check_username(name: object) -> str:
    if not isinstance(name, str) or not _USERNAME.fullmatch(name):
        raise InvalidRequest(
            "Username must be 2-64 characters: letters, digits and . _ @ + -, starting with a letter or digit"
        )
    return name


def parse_user_id(value: object) -> int:
    """APEX sends UserId as a string or a number; both mean the same user."""
    if isinstance(value, bool):
        raise InvalidRequest("UserId must be a positive integer")
    if isinstance(value, int):
        uid = value
    elif isinstance(value, str) and (digits := value.strip()).isascii() and digits.isdigit() and len(digits) <= 19:
        uid = int(digits)
    else:
        raise InvalidRequest("UserId must be a positive integer")
    if not 0 < uid <= MAX_USER_ID:
        raise InvalidRequest("UserId must be a positive integer")
    return uid


@dataclass(frozen=True)
class User:
    user_id: int
    username: str
    email: str
    password_hash: str
    is_admin: bool
    locked: bool
    sealed_totp_secret: bytes | None
    sealed_pending_totp: bytes | None
    account_id: int
    created_at: datetime
    locked_until: datetime | None = None
    sessions_valid_after: datetime | None = None  # sessions made before this were ended everywhere

    def session_revoked(self, created_at: datetime) -> bool:
        """Whether a session made at ``created_at`` was ended by a password reset, a lock or a sign-out
        everywhere, on any node: one timestamp on the user, so no session escapes, written or not."""
        return self.sessions_valid_after is not None and created_at < self.sessions_valid_after

    def is_locked(self, now: datetime) -> bool:
        """Locked by an administrator (no end), or by too many failures until ``locked_until``."""
        return self.locked and (self.locked_until is None or now < self.locked_until)

    @property
    def uses_2fa(self) -> bool:
        return self.sealed_totp_secret is not None

    def apex_view(self, now: datetime) -> dict[str, object]:
        """APEX's full user object, every field present and typed as APEX clients parse it.

        Fields that mean nothing here carry APEX's own empty values ("" for strings, 0 for ids,
        ``ZERO_TIME`` for times). ``PasswordHash`` and ``Salt`` are always empty, as APEX sends them:
        the real hash never leaves the store. ``NumberOfFailedAttempt`` is 0: failures are counted per
        window in the shared state store, which a read of the user does not consult.
        """
        locked = self.is_locked(now)
        return {
            "UserId": self.user_id,
            "UserName": self.username,
            "Email": self.email,
            "PasswordHash": "",
            "PendingEmailCode": "",
            "EmailVerified": bool(self.email),
            "AccountId": self.account_id,
            "DateTimeCreated": apex_time(self.created_at),
            "AffiliateId": 0,
            "RefererId": 0,
            "OMSId": 1,
            "Use2FA": self.uses_2fa,
            "Salt": "",
            "PendingCodeTime": ZERO_TIME,
            "Locked": locked,
            # keygate records when a lock after failures ends, not when it began; an administrator's
            # lock has no end, so it shows the zero time like an unlocked user.
            "LockedTime": apex_time(self.locked_until) if locked and self.locked_until is not None else ZERO_TIME,
            "NumberOfFailedAttempt": 0,
            "MarginBorrowerEnabled": False,
            "MarginAcquisitionHalt": False,
            "OperatorId": 1,
        }


ZERO_TIME = "0001-01-01T00:00:00Z"  # APEX's "no time" (.NET's DateTime.MinValue), e.g. in PendingCodeTime


def apex_time(at: datetime) -> str:
    """A time as APEX writes it: ISO 8601 in UTC, whole seconds, ``Z`` (``2017-10-26T17:25:58Z``)."""
    if at.tzinfo is not None:
        at = at.astimezone(timezone.utc)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
