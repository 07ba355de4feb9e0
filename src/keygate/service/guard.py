"""Abuse resistance on the authentication path: replayed nonces, throttling, lockout and trusted sources.

The rules (see ``keygate.domain.throttle`` and docs/security.md):

* wrong API signatures count per source network only, never against a user or a key; a nonce refusal
  (right signature) is not a guess and counts nowhere;
* password and TOTP failures count per source network and per username (known or not alike), and
  those counters refuse *untrusted* sources only; a trusted source (device token, known address)
  has a counter of its own;
* a success pays nothing here for keys; a password success resets its source's counter, marks the
  address as known and hands out a device token.

Signature blocks this process set are remembered locally for a few seconds (bounded in size), so a
blocked source's further wrong signatures cost no shared-state write.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from keygate.domain.devices import issue_device_token, read_device_token
from keygate.domain.errors import AuthenticationFailed, TooManyRequests
from keygate.domain.keys import ApiKey
from keygate.domain.replay import ReplayMode, nonce_as_u64
from keygate.domain.throttle import (
    ThrottlePolicy,
    known_address_mark,
    name_scope,
    network_of,
    password_ip_scope,
    signature_scope,
    source_scope,
)
from keygate.domain.users import User
from keygate.service.audit import AuditLog
from keygate.service.cache import TTLCache
from keygate.service.clock import utcnow
from keygate.service.hash_gate import HashGate
from keygate.store.shared_state import SharedState

TOO_MANY = "Too many failed attempts; retry after the time in Retry-After"
KNOWN_ADDRESS_SECONDS = 30 * 86400
LOCAL_MEMO_SECONDS = 5.0
LOCAL_ENTRIES = 10_000  # bound of each in-process memo (an attacker can make entries: never unbounded)


class PasswordSource(NamedTuple):
    """Where a password attempt for ``username`` comes from, and which counters it answers to."""

    username: str
    ip: str | None
    trusted: str | None  # the src: scope of a trusted source, else None
    device_token: str | None  # the valid token presented, if any (kept, not re-issued)

    @property
    def scopes(self) -> list[str]:
        if self.trusted:
            return [self.trusted]
        return [s for s in (password_ip_scope(self.ip), name_scope(self.username)) if s]


class AbuseGuard:
    def __init__(self, state: SharedState, policy: ThrottlePolicy, unique_window_seconds: int, device_key: bytes,
                 audit: AuditLog | None = None, hash_gate: HashGate | None = None,
                 known_address_seconds: int = KNOWN_ADDRESS_SECONDS, window_size: int = 4096) -> None:
        self.state = state
        self._window_size = window_size
        self.policy = policy
        self._unique_window = unique_window_seconds
        self._device_key = device_key
        self._audit = audit
        self.hash_gate = hash_gate or HashGate()
        self._known_seconds = known_address_seconds
        # Until when (monotonic) a scope is blocked, as this process set it; trusted for LOCAL_MEMO_SECONDS.
        self._blocked: TTLCache[str, float] = TTLCache(LOCAL_MEMO_SECONDS, LOCAL_ENTRIES)
        # Known addresses this process marked lately: a key sign-in re-marks at most hourly.
        self._marked: TTLCache[str, bool] = TTLCache(3600, LOCAL_ENTRIES)

    # ----- nonces -----------------------------------------------------------------------------
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

    def claim_nonce_now(self, key: ApiKey, nonce: str) -> bool:
        """True if the key's replay mode accepts ``nonce`` at once, without waiting: ``compatible``, or
        ``window`` decided in memory under a lease held here (store/window_leases.py), the nonce then
        recorded. False says only that ``claim_nonce`` must decide (a refusal included), and records nothing."""
        mode = key.replay_mode
        if mode is ReplayMode.COMPATIBLE:
            return True
        if mode is not ReplayMode.WINDOW or key.replay_floor_until is not None:
            return False  # (a floor left by a mode switch: claim_nonce checks it)
        return self.state.claim_window_now(key.api_key, nonce, self._window_size) is True

    async def claim_signature_nonce(self, api_key: str, nonce: str, seconds: int) -> bool:
        """Signature v2: claim ``nonce`` once per key for ``seconds`` (the window of ``created``, so the
        state is bounded by it); False if it was already claimed."""
        return await self.state.claim_signature_nonce(api_key, nonce, seconds)

    # ----- local memo of blocks ---------------------------------------------------------------
    def _local_wait(self, scope: str) -> float:
        hit, until = self._blocked.get(scope)
        return max(0.0, (until or 0.0) - time.monotonic()) if hit else 0.0

    async def _block(self, scope: str, seconds: float) -> None:
        await self.state.block(scope, seconds)
        self._blocked.put(scope, time.monotonic() + seconds)

    async def _count(self, scope: str) -> tuple[float, bool]:
        """Count one failure; return (seconds the scope is now refused, whether it was just locked)."""
        count = await self.state.record_failure(scope, self.policy.window_seconds)
        if self.policy.locks(scope, count):
            seconds = self.policy.lockout_seconds or 10 * 365 * 86400
            await self.state.reset(scope)  # the next lock needs as many failures again, after this one ends
            await self._block(scope, seconds)
            return float(seconds), True
        backoff = self.policy.backoff(scope, count)
        if backoff > 0:
            await self._block(scope, backoff)
        return backoff, False

    # ----- API signatures ---------------------------------------------------------------------
    async def signature_refused(self, ip: str | None, refusal: AuthenticationFailed) -> AuthenticationFailed | TooManyRequests:
        """A wrong signature (or unknown key or user): count it against the source network only."""
        scope = signature_scope(ip)
        if scope is None:
            return refusal
        wait = self._local_wait(scope)
        if wait <= 0:
            wait, _ = await self._count(scope)
        return TooManyRequests(math.ceil(wait), TOO_MANY) if wait > 0 else refusal

    async def key_signed_in(self, user: User, ip: str | None) -> None:
        """A key sign-in succeeded: its address becomes a known address of the user (for passwords)."""
        mark = known_address_mark(user.username, ip)
        if mark is None or self._marked.get(mark)[0]:
            return
        await self.state.mark(mark, self._known_seconds)
        self._marked.put(mark, True)

    # ----- passwords and TOTP codes -----------------------------------------------------------
    async def password_source(self, username: str, user: User | None, ip: str | None, device_token: object) -> PasswordSource:
        """Decide whether the attempt comes from a trusted source of ``user``.

        The same shared-state read is made whether or not the user exists (trust marks are keyed by
        the name as typed), so the answer's timing does not depend on it either.
        """
        device = read_device_token(self._device_key, device_token)
        mark = known_address_mark(username, ip)
        known = await self.state.is_marked(mark) if mark else False
        if user is not None and device is not None and device.user_id == user.user_id:
            return PasswordSource(username, ip, source_scope(username, f"d:{device.device_id}"), str(device_token))
        if user is not None and known:
            return PasswordSource(username, ip, source_scope(username, f"a:{network_of(ip)}"), None)
        return PasswordSource(username, ip, None, None)

    async def refuse_if_blocked(self, source: PasswordSource) -> None:
        # Always the shared state (not the local memo): an administrator's unlock counts at once.
        wait = await self.state.blocked_for(source.scopes)
        if wait > 0:
            raise TooManyRequests(math.ceil(wait), TOO_MANY)

    async def password_failed(self, source: PasswordSource, user: User | None, refusal: AuthenticationFailed) -> AuthenticationFailed | TooManyRequests:
        wait = 0.0
        for scope in source.scopes:
            seconds, locked = await self._count(scope)
            wait = max(wait, seconds)
            if locked and self._audit is not None:
                until = f"for {self.policy.lockout_seconds} s" if self.policy.lockout_seconds else "until an administrator unlocks"
                where = "this device or address" if scope.startswith("src:") else "untrusted sources"
                self._audit.record("user.lockout", "locked", subject_user_id=user.user_id if user else None, client_ip=source.ip,
                                   # the name only if it is a user's: a typed name may be a mistyped password
                                   reason=f"{self.policy.lockout_failures} failed sign-ins for "
                                          + (repr(user.username) if user else "a username that is no user's"),
                                   detail=f"{scope}: refused from {where} {until}")
        if wait > 0:
            return TooManyRequests(math.ceil(wait), TOO_MANY)
        return refusal

    async def password_succeeded(self, source: PasswordSource, user: User) -> str:
        """Reset the source's counter, remember the address, and return the device token to hand out."""
        for scope in source.scopes:
            if scope.startswith(("src:", "name:")):
                await self.state.reset(scope)
                self._blocked.evict(scope)
        mark = known_address_mark(user.username, source.ip)
        if mark:
            await self.state.mark(mark, self._known_seconds)
            self._marked.put(mark, True)
        return source.device_token or issue_device_token(self._device_key, user.user_id)

    async def claim_totp_step(self, user_id: int, step: int) -> bool:
        return await self.state.claim_totp_step(user_id, step)
