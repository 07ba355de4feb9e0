"""The user reply is rendered once per user object, and again when a lock after failures ends by itself."""

from __future__ import annotations

import json
import time
from datetime import timedelta

from keygate.api import replies
from keygate.domain.users import User
from keygate.service.clock import utcnow


def _user(**changes: object) -> User:
    values: dict[str, object] = dict(user_id=7, username="cached", email="", password_hash="$argon2id$secret", is_admin=False,
                                     locked=False, sealed_totp_secret=None, sealed_pending_totp=None, account_id=7, created_at=utcnow())
    values.update(changes)
    return User(**values)  # type: ignore[arg-type]


def test_the_body_of_one_user_object_is_rendered_once() -> None:
    user = _user()
    first, second = replies.user_info(user), replies.user_info(user)
    assert first.body is second.body
    assert b"argon2" not in first.body and json.loads(first.body)["PasswordHash"] == ""


def test_a_lock_that_ends_by_itself_is_rendered_again() -> None:
    until = utcnow() + timedelta(seconds=0.3)
    user = _user(locked=True, locked_until=until)
    locked = json.loads(replies.user_info(user).body)
    assert locked["Locked"] is True and locked["LockedTime"] == until.strftime("%Y-%m-%dT%H:%M:%SZ")
    time.sleep(0.4)
    ended = json.loads(replies.user_info(user).body)
    assert (ended["Locked"], ended["LockedTime"]) == (False, "0001-01-01T00:00:00Z")
