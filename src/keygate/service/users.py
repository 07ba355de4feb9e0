"""Users: creation, passwords, locking, signing out, TOTP enrolment.

Every use case takes the acting ``Principal`` and decides by it (an administrator or the operator
manages other users; a person manages their own two-factor sign-in). Each change writes its audit
record and its change-log row in its own transaction (``store.unit``), so every process drops its
cached copy of the user within the change log's bound.

Ending a user's sessions everywhere (password reset, lock, "sign out everywhere") sets the user's
``sessions_valid_after``: every session made before it is refused by every process, including key
sessions that another process has issued but not yet written.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable

import pyotp

from keygate.domain.errors import InvalidRequest, NotFound
from keygate.domain.paging import DEFAULT_PAGE_SIZE, Page, check_paging, parse_search
from keygate.domain.passwords import check_password_policy, hash_password
from keygate.domain.secretbox import SecretBox
from keygate.domain.sessions import SessionKind
from keygate.domain.throttle import name_scope
from keygate.domain.totp import matching_step
from keygate.domain.users import User, check_username
from keygate.service.audit import event
from keygate.service.cache import TTLCache
from keygate.service.clock import utcnow
from keygate.service.coherence import Coherence
from keygate.service.principal import Principal
from keygate.service.sessions import SessionManager
from keygate.store.repositories import UserRepository
from keygate.store.shared_state import SharedState
from keygate.store.unit import Unit, Units

TOTP_ISSUER = "keygate"
MAX_STORED_USER_ID = 2**31 - 1  # the users.user_id column is a 32-bit integer
_TOTP_SESSION_KINDS = (SessionKind.PASSWORD, SessionKind.PENDING_2FA)


def totp_context(user_id: int) -> str:
    return f"totp:{user_id}"


def generate_password() -> str:
    return secrets.token_urlsafe(15)


class UserManager:
    def __init__(self, repo: UserRepository, box: SecretBox, sessions: SessionManager, units: Units, cache_ttl: float,
                 state: SharedState, coherence: Coherence | None = None) -> None:
        self._repo = repo
        self._state = state
        self._box = box
        self._sessions = sessions
        self._units = units
        self._cache: TTLCache[int, User] = TTLCache(cache_ttl, name="users")
        (coherence or Coherence()).on("user", lambda ident: self._cache.evict(int(ident)), self._cache.clear)

    # ----- reading --------------------------------------------------------------------------------
    async def get(self, user_id: int) -> User | None:
        if not 0 < user_id <= MAX_STORED_USER_ID:
            return None  # a well-formed id that no user can have: simply unknown
        hit, user = self._cache.get(user_id)
        return user if hit else await self._cache.load(user_id, self._repo.get)

    async def require(self, user_id: int) -> User:
        user = await self.get(user_id)
        if user is None:
            raise NotFound(f"User {user_id} not found")
        return user

    async def get_by_name(self, username: str) -> User | None:
        return await self._repo.get_by_name(username)

    async def page(self, actor: Principal, search: str = "", page: int = 1, size: int = DEFAULT_PAGE_SIZE) -> Page[User]:
        """A page of users (administrators and the operator): every user by id (the newest first), one
        user by id (a number), or the users whose name starts with ``search`` (any case) by name."""
        actor.require_admin()
        page, size = check_paging(page, size)
        found = await self._repo.page(parse_search(search), (page - 1) * size, size + 1)
        return Page(found[:size], page, size, len(found) > size)

    async def names(self, actor: Principal, user_ids: Iterable[int]) -> dict[int, str]:
        """The usernames of these user ids, in one query (administrators: to label a page of rows)."""
        actor.require_admin()
        return await self._repo.names(i for i in user_ids if 0 < i <= MAX_STORED_USER_ID)

    async def count(self) -> int:
        return await self._repo.count()

    async def read(self, actor: Principal, user_id: int) -> User:
        """A user's record, for themself or an administrator."""
        actor.require_self_or_admin(user_id, "read your own user")
        if actor.user is not None and user_id == actor.user.user_id:
            return actor.user
        return await self.require(user_id)

    # ----- administration -------------------------------------------------------------------------
    async def create(self, actor: Principal, username: str, password: str, email: str = "", is_admin: bool = False) -> User:
        actor.require_admin()
        check_username(username)
        check_password_policy(password)
        if not isinstance(email, str) or len(email) > 254 or (email and "@" not in email):
            raise InvalidRequest("Email must be an address like name@example.com")
        pw_hash = await asyncio.to_thread(hash_password, password)
        async with self._units.begin() as unit:
            user = await self._repo.insert(username, email, pw_hash, is_admin, utcnow(), unit.conn)
            unit.audit(event("user.create", actor=actor, subject_user_id=user.user_id, detail=f"admin={is_admin}"))
            unit.changed("user", user.user_id)  # a process may remember the id as unknown
        return user

    async def _update(self, unit: Unit, user_id: int, **values: object) -> None:
        await self._repo.update(user_id, unit.conn, **values)
        unit.changed("user", user_id)

    async def _end_everywhere(self, unit: Unit, user_id: int) -> int:
        """Every session of the user, written or not, on every process, stops: one timestamp."""
        await self._update(unit, user_id, sessions_valid_after=utcnow())
        return await self._sessions.delete_all_of_user(unit, user_id)

    async def set_password(self, actor: Principal, user_id: int, password: str) -> None:
        """An administrator (or the operator) sets a user's password; every session of the user ends."""
        actor.require_admin()
        check_password_policy(password)
        await self.require(user_id)
        pw_hash = await asyncio.to_thread(hash_password, password)
        async with self._units.begin() as unit:
            await self._repo.update(user_id, unit.conn, password_hash=pw_hash)
            await self._end_everywhere(unit, user_id)
            unit.audit(event("user.password", actor=actor, subject_user_id=user_id))

    async def set_locked(self, actor: Principal, user_id: int, locked: bool, reason: str | None = None) -> User:
        """Lock (no end date: until unlocked; every session ends) or unlock (failure counters cleared)."""
        actor.require_admin()
        if locked:
            actor.require_not_self(user_id, "You cannot lock yourself")
        user = await self.require(user_id)
        async with self._units.begin() as unit:
            await self._update(unit, user_id, locked=locked, locked_until=None)
            if locked:
                await self._end_everywhere(unit, user_id)
            unit.audit(event("user.lock" if locked else "user.unlock", actor=actor, subject_user_id=user_id, reason=reason))
        if not locked:
            await self._state.reset(name_scope(user.username))  # the name's lockout ends with the unlock
        return await self.require(user_id)

    async def sign_out_everywhere(self, actor: Principal, user_id: int) -> int:
        """End every session of the user, on every process. Returns how many rows were deleted."""
        actor.require_self_or_admin(user_id, "sign yourself out")
        await self.require(user_id)
        async with self._units.begin() as unit:
            ended = await self._end_everywhere(unit, user_id)
            unit.audit(event("user.signout", actor=actor, subject_user_id=user_id, detail=f"{ended} sessions ended"))
        return ended

    # ----- two-factor sign-in ---------------------------------------------------------------------
    def _require_own_totp(self, actor: Principal, user_id: int) -> None:
        actor.require_password_session()
        if not actor.is_admin and actor.user_id != user_id:
            raise NotFound(f"User {user_id} not found")

    async def begin_totp(self, actor: Principal, user_id: int, current_code: object = None) -> tuple[str, str]:
        """Start enrolment: return the base32 secret and its otpauth:// URI. Not active until confirmed.

        Replacing an enrolled seed needs a current code of that seed (a stolen password session alone
        must not move the second factor to the thief's phone), unless an administrator does it for
        another user, or the operator does it on the host (the CLI).
        """
        self._require_own_totp(actor, user_id)
        if current_code is not None and (isinstance(current_code, bool) or not isinstance(current_code, (str, int))):
            raise InvalidRequest("Code must be the current 6-digit code, as a string")
        user = await self.require(user_id)
        by_admin = actor.is_admin and actor.user_id != user_id  # the operator too (no user of its own)
        if user.sealed_totp_secret is not None and not by_admin:
            if not _code_current(self.totp_secret(user), current_code):
                raise InvalidRequest("Two-factor sign-in is already enabled: send the current 6-digit code (Code) to replace it")
        secret = pyotp.random_base32()
        async with self._units.begin() as unit:
            await self._update(unit, user_id, sealed_pending_totp=self._box.seal(secret, totp_context(user_id)))
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=TOTP_ISSUER)
        return secret, uri

    async def confirm_totp(self, actor: Principal, user_id: int, code: object) -> None:
        """Turn two-factor sign-in on with a current code of the pending seed. The user's other password
        sessions (and pending sign-ins) end everywhere: they were made without the second factor."""
        self._require_own_totp(actor, user_id)
        user = await self.require(user_id)
        if user.sealed_pending_totp is None:
            raise InvalidRequest("No two-factor enrolment is in progress; start one first")
        secret = self._box.open(user.sealed_pending_totp, totp_context(user_id))
        if not _code_current(secret, code):
            raise InvalidRequest("The code is wrong or expired; enter the current 6-digit code")
        async with self._units.begin() as unit:
            await self._update(unit, user_id, sealed_totp_secret=user.sealed_pending_totp, sealed_pending_totp=None)
            await self._sessions.end_some_of_user(unit, user_id, _TOTP_SESSION_KINDS, keep=actor.token_hash)
            unit.audit(event("user.2fa.enable", actor=actor, subject_user_id=user_id))

    async def disable_totp(self, actor: Principal, user_id: int, code: object | None) -> None:
        """Remove TOTP: the user proves a current code; an administrator (or the operator) may do it for
        another user without one. The user's other password sessions end everywhere."""
        actor.require_password_session()
        if not actor.may_act_for(user_id):
            raise NotFound(f"User {user_id} not found")
        user = await self.require(user_id)
        if user.sealed_totp_secret is None:
            raise InvalidRequest("Two-factor sign-in is not enabled for this user")
        if not (actor.is_admin and actor.user_id != user_id):
            if code is None or not _code_current(self.totp_secret(user), code):
                raise InvalidRequest("The code is wrong or expired; enter the current 6-digit code")
        async with self._units.begin() as unit:
            await self._update(unit, user_id, sealed_totp_secret=None, sealed_pending_totp=None)
            await self._sessions.end_some_of_user(unit, user_id, _TOTP_SESSION_KINDS, keep=actor.token_hash)
            unit.audit(event("user.2fa.disable", actor=actor, subject_user_id=user_id))

    def totp_secret(self, user: User) -> str:
        assert user.sealed_totp_secret is not None
        return self._box.open(user.sealed_totp_secret, totp_context(user.user_id))

    # ----- master key -----------------------------------------------------------------------------
    async def reseal_all(self, new_box: SecretBox, old_box: SecretBox) -> int:
        """Re-seal every TOTP seed under ``new_box`` (compare-and-set per row)."""
        count = 0
        for column in ("sealed_totp_secret", "sealed_pending_totp"):
            for user_id, sealed in await self._repo.all_sealed(column):
                if new_box.sealed_with_current(sealed):
                    continue
                plain = old_box.open(sealed, totp_context(user_id))
                if await self._repo.replace_sealed(user_id, sealed, new_box.seal(plain, totp_context(user_id)), column):
                    count += 1
                async with self._units.begin() as unit:
                    unit.changed("user", user_id)
        return count


def _code_current(secret: str, code: object) -> bool:
    """Whether ``code`` is a current code of ``secret`` (enrolment and removal; sign-in also claims the step)."""
    return matching_step(secret, code) is not None
