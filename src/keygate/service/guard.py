"""Abuse resistance on the authentication path: replayed nonces, throttling, and lockout.

A success pays nothing here unless the key's replay mode asks for a nonce claim: failure counters
are read and written only when an attempt fails (and, for passwords, before the slow hash, so a
guesser who is being throttled learns nothing). See docs/security.md for the threat model.
"""

from __future__ import annotations

import math

from keygate.domain.errors import AuthenticationFailed, TooManyRequests
from keygate.domain.keys import ApiKey
from keygate.domain.replay import ReplayMode, nonce_as_u64
from keygate.domain.throttle import ThrottlePolicy, consecutive_scope, ip_scope, key_scope, user_scope
from keygate.domain.users import User
from keygate.service.clock import utcnow
from keygate.service.users import UserManager
from keygate.store.shared_state import SharedState

LOCKOUT_WINDOW_SECONDS = 86400


class AbuseGuard:
    def __init__(self, state: SharedState, policy: ThrottlePolicy, users: UserManager, unique_window_seconds: int,
                 window_size: int = 4096) -> None:
        self.state = state
        self._window_size = window_size
        self.policy = policy
        self._users = users
        self._unique_window = unique_window_seconds
        self._dirty: set[str] = set()  # scopes this process saw fail; a success resets only those

    async def claim_nonce(self, key: ApiKey, nonce: str) -> AuthenticationFailed | None:
        """Apply the key's replay mode; return the refusal, or ``None`` if the nonce is accepted."""
        if key.replay_mode is ReplayMode.COMPATIBLE:
            return None
        if key.replay_mode is ReplayMode.INCREASING:
            value = nonce_as_u64(nonce)
            if value is None:
                return AuthenticationFailed("nonce not an unsigned integer", public_message=(
                    "This key requires increasing nonces: send the Nonce as an unsigned 64-bit integer, e.g. a millisecond timestamp"))
            if not await self.state.claim_increasing(key.api_key, value):
                return AuthenticationFailed("nonce not increasing (replay?)", public_message=(
                    "Nonce must be greater than the last nonce accepted for this key; use a fresh millisecond timestamp"))
            return None
        if key.replay_floor is not None and key.replay_floor_until is not None and utcnow() < key.replay_floor_until:
            value = nonce_as_u64(nonce)
            if value is not None and value <= key.replay_floor:
                return AuthenticationFailed("nonce at or below the floor of an earlier mode (replay?)", public_message=(
                    "Nonce was already used with this key; send a new random nonce for every request"))
        if key.replay_mode is ReplayMode.WINDOW:
            if not await self.state.claim_window(key.api_key, nonce, self._window_size, self._unique_window):
                return AuthenticationFailed("nonce already used or below the key's floor (replay?)", public_message=(
                    "Nonce was already used with this key (or is older than what it remembers); send a fresh nonce, "
                    "e.g. a millisecond timestamp"))
            return None
        if not await self.state.claim_unique(key.api_key, nonce, self._unique_window):
            return AuthenticationFailed("nonce reused (replay?)", public_message=(
                "Nonce was already used with this key; send a new random nonce for every request"))
        return None

    async def refuse_if_blocked(self, ip: str | None, user: User | None = None) -> None:
        scopes = [s for s in (ip_scope(ip), user_scope(user.user_id) if user else None) if s]
        wait = await self.state.blocked_for(scopes)
        if wait > 0:
            raise TooManyRequests(math.ceil(wait))

    async def on_failure(self, ip: str | None, key: ApiKey | None, user: User | None, refusal: AuthenticationFailed) -> AuthenticationFailed | TooManyRequests:
        """Count the failure in every scope it touches; answer 429 if one of them is now blocked."""
        scopes = [s for s in (ip_scope(ip), key_scope(key.api_key) if key else None, user_scope(user.user_id) if user else None) if s]
        wait = 0.0
        for scope in scopes:
            count = await self.state.record_failure(scope, self.policy.window_seconds)
            self._dirty.add(scope)
            backoff = self.policy.backoff(scope, count)
            if backoff > 0:
                await self.state.block(scope, backoff)
                wait = max(wait, backoff)
        if user is not None:
            await self._count_towards_lockout(user, ip, refusal)
        if wait > 0:
            return TooManyRequests(math.ceil(wait), "Too many failed attempts; retry after the time in Retry-After")
        return refusal

    async def _count_towards_lockout(self, user: User, ip: str | None, refusal: AuthenticationFailed) -> None:
        scope = consecutive_scope(user.user_id)
        count = await self.state.record_failure(scope, LOCKOUT_WINDOW_SECONDS)
        self._dirty.add(scope)
        if count >= self.policy.lockout_failures and not user.is_locked(utcnow()):
            await self._users.lock_after_failures(user.user_id, self.policy.lockout_seconds, count, ip)

    @property
    def saw_failures(self) -> bool:
        """Whether a success may have counters to reset; usually not, and then ``on_success`` is a no-op."""
        return bool(self._dirty)

    async def on_success(self, key: ApiKey | None, user: User) -> None:
        if not self._dirty:  # the common case: nothing failed here lately, so nothing to reset
            return
        for scope in (key_scope(key.api_key) if key else None, user_scope(user.user_id), consecutive_scope(user.user_id)):
            if scope and scope in self._dirty:
                await self.state.reset(scope)
                self._dirty.discard(scope)
