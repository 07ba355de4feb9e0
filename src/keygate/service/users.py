"""Users: creation, passwords, locking, TOTP enrolment."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta

import pyotp

from keygate.domain.errors import InvalidRequest, NotFound
from keygate.domain.passwords import check_password_policy, hash_password
from keygate.domain.secretbox import SecretBox
from keygate.domain.users import User, check_username
from keygate.service.audit import AuditLog
from keygate.service.cache import TTLCache
from keygate.service.clock import utcnow
from keygate.service.coherence import Coherence
from keygate.service.principal import Principal
from keygate.service.sessions import SessionManager
from keygate.domain.throttle import name_scope
from keygate.domain.totp import matching_step
from keygate.store.repositories import UserRepository
from keygate.store.shared_state import SharedState

TOTP_ISSUER = "keygate"
MAX_STORED_USER_ID = 2**31 - 1  # the users.user_id column is a 32-bit integer


def totp_context(user_id: int) -> str:
    return f"totp:{user_id}"


def generate_password() -> str:
    return secrets.token_urlsafe(15)


class UserManager:
    def __init__(self, repo: UserRepository, box: SecretBox, sessions: SessionManager, audit: AuditLog, cache_ttl: float,
                 state: SharedState, coherence: Coherence | None = None) -> None:
        self._repo = repo
        self._state = state
        self._coherence = coherence or Coherence()
        self._box = box
        self._sessions = sessions
        self._audit = audit
        self._cache: TTLCache[int, User] = TTLCache(cache_ttl)
        self._coherence.on("user", lambda ident: self._cache.evict(int(ident)), self._cache.clear)

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

    async def list(self) -> list[User]:
        return await self._repo.list()

    async def count(self) -> int:
        return await self._repo.count()

    async def create(
        self, username: str, password: str, email: str = "", is_admin: bool = False, actor: Principal | None = None
    ) -> User:
        check_username(username)
        check_password_policy(password)
        if not isinstance(email, str) or len(email) > 254 or (email and "@" not in email):
            raise InvalidRequest("Email must be an address like name@example.com")
        pw_hash = await asyncio.to_thread(hash_password, password)
        user = await self._repo.insert(username, email, pw_hash, is_admin, utcnow())
        self._cache.evict(user.user_id)  # this node or another may remember the id as unknown
        await self._coherence.changed("user", str(user.user_id))
        self._audit.record(
            "user.create",
            actor_user_id=actor.user_id if actor else None,
            subject_user_id=user.user_id,
            detail=f"admin={is_admin}",
        )
        return user

    async def _update(self, user_id: int, **values: object) -> User:
        await self.require(user_id)
        await self._repo.update(user_id, **values)
        self._cache.evict(user_id)
        await self._coherence.changed("user", str(user_id))
        return await self.require(user_id)

    async def set_password(self, user_id: int, password: str, actor: Principal | None = None) -> None:
        check_password_policy(password)
        pw_hash = await asyncio.to_thread(hash_password, password)
        await self._update(user_id, password_hash=pw_hash)
        await self._sessions.end_for_user(user_id)
        self._audit.record("user.password", actor_user_id=actor.user_id if actor else None, subject_user_id=user_id)

    async def set_locked(self, user_id: int, locked: bool, actor: Principal | None = None, reason: str | None = None) -> User:
        """Lock (no end date: until unlocked) or unlock; unlocking also clears the failure counters."""
        user = await self._update(user_id, locked=locked, locked_until=None)
        if locked:
            await self._sessions.end_for_user(user_id)
        else:
            await self._state.reset(name_scope(user.username))  # the name's lockout ends with the unlock
        self._audit.record(
            "user.lock" if locked else "user.unlock",
            actor_user_id=actor.user_id if actor else None,
            subject_user_id=user_id,
            reason=reason,
        )
        return user

    async def lock_after_failures(self, user_id: int, seconds: int, failures: int, client_ip: str | None) -> None:
        """The automatic lockout: until ``seconds`` pass (0: until an administrator unlocks)."""
        until = utcnow() + timedelta(seconds=seconds) if seconds > 0 else None
        await self._update(user_id, locked=True, locked_until=until)
        await self._sessions.end_for_user(user_id)
        self._audit.record("user.lockout", "locked", subject_user_id=user_id, client_ip=client_ip,
                           reason=f"{failures} consecutive failed authentications",
                           detail=f"until {until.isoformat()}" if until else "until an administrator unlocks")

    async def begin_totp(self, user_id: int, current_code: object = None, actor: Principal | None = None,
                         operator: bool = False) -> tuple[str, str]:
        """Start enrolment: return the base32 secret and its otpauth:// URI. Not active until confirmed.

        Replacing an enrolled seed needs a current code of that seed (a stolen password session alone
        must not move the second factor to the thief's phone), unless an administrator does it for
        another user, or the operator does it on the host (``operator=True``: the CLI).
        """
        if current_code is not None and (isinstance(current_code, bool) or not isinstance(current_code, (str, int))):
            raise InvalidRequest("Code must be the current 6-digit code, as a string")
        user = await self.require(user_id)
        by_admin = operator or (actor is not None and actor.is_admin and actor.user_id != user_id)
        if user.sealed_totp_secret is not None and not by_admin:
            if not _code_current(self.totp_secret(user), current_code):
                raise InvalidRequest("Two-factor sign-in is already enabled: send the current 6-digit code (Code) to replace it")
        secret = pyotp.random_base32()
        await self._update(user_id, sealed_pending_totp=self._box.seal(secret, totp_context(user_id)))
        uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=TOTP_ISSUER)
        return secret, uri

    async def confirm_totp(self, user_id: int, code: str) -> None:
        user = await self.require(user_id)
        if user.sealed_pending_totp is None:
            raise InvalidRequest("No two-factor enrolment is in progress; start one first")
        secret = self._box.open(user.sealed_pending_totp, totp_context(user_id))
        if not _code_current(secret, code):
            raise InvalidRequest("The code is wrong or expired; enter the current 6-digit code")
        await self._update(user_id, sealed_totp_secret=user.sealed_pending_totp, sealed_pending_totp=None)
        self._audit.record("user.2fa.enable", actor_user_id=user_id, subject_user_id=user_id)

    async def disable_totp(self, user_id: int, code: str | None, actor: Principal | None = None) -> None:
        """Remove TOTP; the user must prove a current code unless an admin does it."""
        user = await self.require(user_id)
        if user.sealed_totp_secret is None:
            raise InvalidRequest("Two-factor sign-in is not enabled for this user")
        if actor is None or not actor.is_admin or actor.user_id == user_id:
            if code is None or not _code_current(self.totp_secret(user), code):
                raise InvalidRequest("The code is wrong or expired; enter the current 6-digit code")
        await self._update(user_id, sealed_totp_secret=None, sealed_pending_totp=None)
        self._audit.record("user.2fa.disable", actor_user_id=actor.user_id if actor else user_id, subject_user_id=user_id)

    def totp_secret(self, user: User) -> str:
        assert user.sealed_totp_secret is not None
        return self._box.open(user.sealed_totp_secret, totp_context(user.user_id))

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
                self._cache.evict(user_id)
                await self._coherence.changed("user", str(user_id))
        return count

    def invalidate(self, user_id: int) -> None:
        self._cache.evict(user_id)


def _code_current(secret: str, code: object) -> bool:
    """Whether ``code`` is a current code of ``secret`` (enrolment and removal; sign-in also claims the step)."""
    return matching_step(secret, code) is not None
