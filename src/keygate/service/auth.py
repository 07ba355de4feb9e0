"""Authentication use cases: API-key signatures, passwords with optional TOTP, and session tokens.

Every refusal of credentials raises ``AuthenticationFailed`` with the same public message, whatever
the cause (unknown key, wrong user, wrong signature, address not allowed); the precise cause goes to
the audit trail only. ``Locked`` is revealed only to a caller whose credentials were right.

Such refusals also take the same time whatever the cause: each is answered no sooner than
``refusal_seconds`` after the attempt began (an ``asyncio.sleep``, which costs no CPU), which is
longer than any of the causes takes to find.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

from keygate.domain.errors import AuthenticationFailed, InvalidRequest, KeygateError, NotAuthorized, NotFound
from keygate.domain.key_material import KeyMaterial, decode_signature, signature_shape_ok, verify
from keygate.domain.keys import ApiKey
from keygate.domain.passwords import verify_password
from keygate.domain.permissions import ALL_PERMISSIONS
from keygate.domain.replay import ReplayMode
from keygate.domain.sessions import Session, SessionKind
from keygate.domain.signature import signing_message
from keygate.domain.totp import matching_step
from keygate.domain.users import User, parse_user_id
from keygate.service.audit import AuditLog, event
from keygate.service.clock import utcnow
from keygate.service.coherence import Coherence
from keygate.service.guard import AbuseGuard, PasswordSource
from keygate.service.keys import KeyManager
from keygate.service.principal import Principal
from keygate.service.sessions import SessionManager
from keygate.service.users import UserManager
from keygate.store.unit import Units

MAX_API_KEY_LENGTH = 64
MAX_NONCE_LENGTH = 128
MAX_USERNAME_LENGTH = 64
MAX_PASSWORD_LENGTH = 256
_ABSENT = (None, "")


class KeyCredentials(NamedTuple):
    """The four signed fields, checked for shape. Made for every signed request: a ``NamedTuple``
    (immutable, and cheap to build), not a frozen dataclass."""

    api_key: str
    signature: str
    user_id: int
    nonce: str

    @classmethod
    def parse(cls, values: Mapping[str, object]) -> "KeyCredentials":
        """Read the four fields from a mapping whose keys are already lower-case.

        Shape errors are reported precisely (they reveal nothing about any account).
        """
        api_key, signature, user_id, nonce = values.get("apikey"), values.get("signature"), values.get("userid"), values.get("nonce")
        if api_key in _ABSENT or signature in _ABSENT or user_id in _ABSENT or nonce in _ABSENT:
            missing = [n for n, k in (("APIKey", "apikey"), ("Signature", "signature"), ("UserId", "userid"), ("Nonce", "nonce")) if values.get(k) in _ABSENT]
            raise InvalidRequest(f"Missing {', '.join(missing)}: send APIKey, Signature, UserId and Nonce")
        if not isinstance(api_key, str) or len(api_key) > MAX_API_KEY_LENGTH or not api_key.isascii() or not api_key.isprintable():
            raise InvalidRequest(f"APIKey must be a string of at most {MAX_API_KEY_LENGTH} characters")
        if not isinstance(signature, str) or not signature_shape_ok(signature):
            raise InvalidRequest("Signature must be 64 hexadecimal characters: HMAC-SHA256 of Nonce + UserId + APIKey "
                                 "(for an ed25519 key: its Ed25519 signature, in base64 or 128 hexadecimal characters)")
        if isinstance(nonce, int) and not isinstance(nonce, bool):
            nonce = str(nonce)
        if not isinstance(nonce, str) or len(nonce) > MAX_NONCE_LENGTH or not nonce.isascii() or not nonce.isprintable():
            raise InvalidRequest(f"Nonce must be a string or number of at most {MAX_NONCE_LENGTH} printable characters")
        return cls(api_key.strip(), signature, parse_user_id(user_id), nonce)


class SessionGrant(NamedTuple):
    token: str
    user: User
    session: Session | None = None
    device: str | None = None  # after a password sign-in: the device token to keep (cookie or Keygate-Device header)


class Pending2FA(NamedTuple):
    token: str
    user: User


class Authenticator:
    def __init__(
        self,
        users: UserManager,
        keys: KeyManager,
        sessions: SessionManager,
        audit: AuditLog,
        guard: AbuseGuard,
        pending_2fa_lifetime: timedelta,
        bind_session_ip: bool = True,
        key_max_idle_days: int = 0,
        coherence: Coherence | None = None,
        units: Units | None = None,
        refusal_seconds: float = 0.0,
    ) -> None:
        assert units is not None, "the container wires the units of work"
        self._units = units
        self._guard = guard
        self._refusal_seconds = refusal_seconds
        self._coherence = coherence or Coherence()
        self._healthy = self._coherence.require_healthy
        # The principal memo: token -> (generation, until, client address, principal). See principal_for_token.
        self._memo: dict[str, tuple[int, float, str | None, Principal]] = {}
        # The signer memo: (APIKey, UserId, client address) -> what a right signature then grants. See _verify_now.
        self._signers: dict[tuple[str, str, str | None], _Signer] = {}
        self._key_max_idle_days = key_max_idle_days
        self._users = users
        self._keys = keys
        self._sessions = sessions
        self._audit = audit
        self._pending_lifetime = pending_2fa_lifetime
        self._bind_ip = bind_session_ip

    async def _pad(self, started: float) -> None:
        """Answer a refusal no sooner than ``refusal_seconds`` after ``started``, whatever its cause."""
        left = started + self._refusal_seconds - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)

    # ----- API keys ---------------------------------------------------------------------------
    async def refuse_guess(self, action: str, reason: str, key: ApiKey | None, user: User | None, client_ip: str | None,
                      started: float) -> Exception:
        """Audit a refused signature (which proves nothing: unknown key or user, wrong signature) and
        count it against the source address only; return the error to raise, in the same time for all."""
        if key is not None:
            self._keys.note_refusal(key.api_key)
        self._audit.record(action, "failure", reason=reason, subject_user_id=user.user_id if user else None,
                           api_key=key.api_key if key else None, client_ip=client_ip)
        refusal = await self._guard.signature_refused(client_ip, AuthenticationFailed(reason))
        await self._pad(started)
        return refusal

    def refuse_holder(self, action: str, reason: str, key: ApiKey, user: User, client_ip: str | None, public: str) -> Exception:
        """Audit a refusal of a caller that holds the secret: told exactly why, counted nowhere (not a guess),
        but in the key's usage."""
        self._keys.note_refusal(key.api_key)
        self._audit.record(action, "failure", reason=reason, subject_user_id=user.user_id, api_key=key.api_key, client_ip=client_ip)
        return AuthenticationFailed(reason, public_message=public)

    def require_healthy(self) -> None:
        """Fail closed (503) while this process cannot trust its caches (change log or Redis unread)."""
        self._healthy()

    async def user(self, user_id: int) -> User | None:
        """The user, from the cache every process invalidates (for a signature's ``UserId``)."""
        return await self._users.get(user_id)

    async def claim_signature_nonce(self, api_key: str, nonce: str, seconds: int) -> bool:
        """Signature v2's nonce, claimed once per key for ``seconds`` (``AbuseGuard``)."""
        return await self._guard.claim_signature_nonce(api_key, nonce, seconds)

    def tally_signed_request(self, user: User, key: ApiKey, client_ip: str | None) -> Principal:
        """An accepted per-request signature (APEX or v2): counted in the audit tally; the key's rights."""
        self._audit.tally("auth.signed_request", subject_user_id=user.user_id, api_key=key.api_key, client_ip=client_ip)
        return Principal(user, key.permissions, SessionKind.KEY, key.api_key)

    async def grant_key_session(self, user: User, key: ApiKey, client_ip: str | None, serial: int,
                                detail: str | None = None) -> SessionGrant:
        """A key sign-in (APEX or v2) succeeded: the address becomes a known one of the user, a key
        session is issued with the serial of the secret that signed, and the sign-in is audited."""
        await self._guard.key_signed_in(user, client_ip)  # a known address of the user from now on
        token = await self._sessions.issue(user.user_id, SessionKind.KEY, key.api_key, client_ip, key_serial=serial)
        self._audit.record("auth.key", subject_user_id=user.user_id, api_key=key.api_key, client_ip=client_ip, detail=detail)
        return SessionGrant(token, user)

    def check_holder(self, action: str, key: ApiKey, user: User, client_ip: str | None, now: datetime) -> None:
        """The grant rules after a right signature (APEX or v2): the address is in the key's allowlist,
        the key has not expired (nor gone idle too long), the user is not locked. Each refusal tells the
        caller exactly why: it proved it holds the key."""
        if not key.ip_allowlist.allows(client_ip):
            raise self.refuse_holder(action, f"client ip {client_ip} not in allowlist", key, user, client_ip,
                                      "This API key may not be used from your IP address")
        if key.expired(now):
            raise self.refuse_holder(action, "api key expired", key, user, client_ip, "This API key has expired; create a new one")
        if key.idle_expired(now, self._key_max_idle_days):
            raise self.refuse_holder(action, "api key without allowlist unused too long", key, user, client_ip,
                                      f"This API key has no IP allowlist and went unused for {self._key_max_idle_days} days, so it expired")
        if user.is_locked(now):
            # Not a guess (the signature was right): tell the caller, count nothing (but the key's usage).
            self._keys.note_refusal(key.api_key)
            self._audit.record(action, "failure", reason="user locked", subject_user_id=user.user_id,
                               api_key=key.api_key, client_ip=client_ip)
            raise AuthenticationFailed("user locked", locked=True)

    def _verify_now(self, api_key: bytes | None, signature: bytes | None, user_id: bytes | None, nonce: bytes | None,
                    client_ip: str | None) -> tuple[_Signer, str] | None:
        """The signer and nonce of a right signature whose key, user and address ``_verify_key``
        accepted moments ago; or ``None``: ``_verify_key`` decides (and says why it refuses).

        The four values are the headers as sent. Only the happy path is decided here, with the rules
        of ``_verify_key``: the key, the user and the address must be those of a signer memo entry
        (written by ``_verify_key`` after it accepted them, under the rules of the principal memo: at
        most ``MEMO_SECONDS``, voided by any change this process applies, not kept when the key
        expires or goes idle within that time or the user has a lock); the nonce must have a shape
        the whole path takes as it is; the signature must be right under the key's current secret
        or public key. Anything else (a miss, an odd shape, a wrong signature, the previous secret of
        a rotation) goes the whole way, as if this had not been tried. Nothing is recorded here: the
        nonce is claimed after (``_claim_now``, else ``_claim``), as the last step.
        """
        if api_key is None or signature is None or user_id is None or nonce is None:
            return None
        signer = self._signers.get((api_key.decode("latin-1"), user_id.decode("latin-1"), client_ip))
        if signer is None or signer.generation != self._coherence.generation or time.monotonic() >= signer.until:
            return None
        text = nonce.decode("latin-1")
        if not text or len(text) > MAX_NONCE_LENGTH or not text.isascii() or not text.isprintable() or text.strip() != text:
            return None
        raw = decode_signature(signer.key.key_type, signature.decode("latin-1"))
        if raw is None or not verify(signer.material, text.encode() + signer.tail, raw):
            return None
        self._healthy()
        return signer, text

    def _claim_now(self, signer: _Signer, nonce: str, client_ip: str | None) -> bool:
        """The nonce accepted at once by the key's replay mode (``AbuseGuard.claim_nonce_now``), and the
        use counted; False: nothing recorded, ``_claim`` decides."""
        if not self._guard.claim_nonce_now(signer.key, nonce):
            return False
        self._count_use(signer.key, nonce, client_ip)
        return True

    async def _claim(self, signer: _Signer, nonce: str, client_ip: str | None, action: str) -> None:
        """The nonce claimed by the key's replay mode, waiting for the store as ``_verify_key`` does;
        a refusal is audited and raised as there."""
        refusal = await self._guard.claim_nonce(signer.key, nonce)
        if refusal is not None:
            raise self._nonce_refused(action, refusal, signer.key, signer.user, client_ip)
        self._count_use(signer.key, nonce, client_ip)

    def _count_use(self, key: ApiKey, nonce: str, client_ip: str | None) -> None:
        """An accepted signature with ``nonce``: a ``compatible`` key's highest nonce noted, the use counted."""
        if key.replay_mode is ReplayMode.COMPATIBLE:
            self._keys.note_compatible_nonce(key.api_key, nonce)
        self._keys.mark_used(key.api_key, client_ip)

    def _nonce_refused(self, action: str, refusal: AuthenticationFailed, key: ApiKey, user: User,
                       client_ip: str | None) -> AuthenticationFailed:
        """The right secret with an unacceptable nonce: not a guess, not counted as one; audited."""
        self._keys.note_refusal(key.api_key)
        self._audit.record(action, "failure", reason=refusal.reason, subject_user_id=user.user_id,
                           api_key=key.api_key, client_ip=client_ip)
        return refusal

    def principal_for_signature_now(self, api_key: bytes | None, signature: bytes | None, user_id: bytes | None,
                                    nonce: bytes | None, client_ip: str | None) -> Principal | Awaitable[Principal] | None:
        """``principal_for_signature`` of the four headers as sent, on the happy path (``_verify_now``):
        the principal when the nonce is accepted at once, else an awaitable of it (the claim waits for
        the store, and may refuse); ``None``: ``principal_for_signature`` decides. (An awaitable only
        when needed: on the common path a coroutine would cost a measurable share of the call.)"""
        found = self._verify_now(api_key, signature, user_id, nonce, client_ip)
        if found is None:
            return None
        signer, text = found
        if not self._claim_now(signer, text, client_ip):
            return self._signed_after_claim(signer, text, client_ip)
        return self._signed(signer, client_ip)

    async def _signed_after_claim(self, signer: _Signer, nonce: str, client_ip: str | None) -> Principal:
        await self._claim(signer, nonce, client_ip, "auth.signed_request")
        return self._signed(signer, client_ip)

    def _signed(self, signer: _Signer, client_ip: str | None) -> Principal:
        """``tally_signed_request`` for a memo entry: its principal is built once, with the entry."""
        self._audit.tally("auth.signed_request", subject_user_id=signer.user.user_id, api_key=signer.key.api_key, client_ip=client_ip)
        return signer.principal

    async def authenticate_key_now(self, api_key: bytes | None, signature: bytes | None, user_id: bytes | None,
                                   nonce: bytes | None, client_ip: str | None) -> SessionGrant | None:
        """``authenticate_key`` of the four headers as sent, its signature decided on the happy path
        (``_verify_now``), or ``None``: then ``authenticate_key`` decides."""
        found = self._verify_now(api_key, signature, user_id, nonce, client_ip)
        if found is None:
            return None
        signer, text = found
        if not self._claim_now(signer, text, client_ip):
            await self._claim(signer, text, client_ip, "auth.key")
        return await self.grant_key_session(signer.user, signer.key, client_ip, signer.key.secret_serial)

    def _remember_signer(self, generation: int, creds: KeyCredentials, user: User, key: ApiKey, client_ip: str | None,
                         now: datetime) -> None:
        """After ``_verify_key`` accepted a signature under the key's current secret (see ``_verify_now``)."""
        later = now + MEMO_TIMEDELTA
        if user.locked or key.expired(later) or key.idle_expired(later, self._key_max_idle_days):
            return
        if len(self._signers) >= MEMO_ENTRIES:
            self._signers.clear()
        principal = Principal(user, key.permissions, SessionKind.KEY, key.api_key)
        self._signers[(creds.api_key, str(creds.user_id), client_ip)] = _Signer(
            generation, time.monotonic() + MEMO_SECONDS, user, key, self._keys.material_of(key),
            f"{creds.user_id}{creds.api_key}".encode(), principal)

    async def _verify_key(self, creds: KeyCredentials, client_ip: str | None, action: str) -> tuple[User, ApiKey, int]:
        """The user and key of a valid signature, and the serial of the secret that made it."""
        started = time.monotonic()
        self._healthy()
        generation = self._coherence.generation  # before any read: a change applied meanwhile voids the signer memo
        key = await self._keys.lookup(creds.api_key)
        user = await self._users.get(creds.user_id)
        if key is None:
            raise await self.refuse_guess(action, "unknown api key", key, user, client_ip, started)
        if user is None or key.user_id != user.user_id:
            raise await self.refuse_guess(action, "api key belongs to another user", key, user, client_ip, started)
        now = utcnow()
        serial = key.secret_serial
        # The signature's shape must be one the key's type accepts (an hmac-shaped one on an ed25519
        # key simply does not match); then the current secret or public key, or the previous one
        # during a rotation grace, must verify it.
        raw = decode_signature(key.key_type, creds.signature)
        message = signing_message(creds.nonce, creds.user_id, creds.api_key)
        secret_ok = raw is not None and verify(self._keys.material_of(key), message, raw)
        if not secret_ok and raw is not None and (previous := self._keys.previous_material_of(key)) is not None:
            secret_ok = verify(previous, message, raw)
            serial -= 1
        if not secret_ok:
            raise await self.refuse_guess(action, "signature mismatch", key, user, client_ip, started)
        # From here on the caller proved it holds the secret: refusals may say exactly what is wrong.
        if key.requires_v2:
            raise self.refuse_holder(action, "api key requires signature v2", key, user, client_ip,
                                      "This API key accepts Signature v2 (RFC 9421) only: sign the request with "
                                      "Signature-Input and Signature instead of APIKey, Signature, UserId and Nonce")
        self.check_holder(action, key, user, client_ip, now)
        if key.replay_mode is not ReplayMode.COMPATIBLE:
            refusal = await self._guard.claim_nonce(key, creds.nonce)
            if refusal is not None:
                raise self._nonce_refused(action, refusal, key, user, client_ip)
        self._count_use(key, creds.nonce, client_ip)
        if serial == key.secret_serial:
            self._remember_signer(generation, creds, user, key, client_ip, now)
        return user, key, serial

    async def authenticate_key(self, creds: KeyCredentials, client_ip: str | None) -> SessionGrant:
        user, key, serial = await self._verify_key(creds, client_ip, "auth.key")
        return await self.grant_key_session(user, key, client_ip, serial)

    async def principal_for_signature(self, creds: KeyCredentials, client_ip: str | None) -> Principal:
        """A signed request is accepted if and only if (docs/security.md, "The grant rules"): the key
        exists and belongs to ``UserId``; the signature is right under its current secret, or its
        previous one during a rotation grace; the address is in its allowlist; it has not expired; the
        user is not locked; and the nonce satisfies the key's replay mode."""
        user, key, _ = await self._verify_key(creds, client_ip, "auth.signed_request")
        return self.tally_signed_request(user, key, client_ip)

    # ----- passwords and TOTP -----------------------------------------------------------------
    async def authenticate_password(self, username: object, password: object, client_ip: str | None,
                                    device: object = None) -> SessionGrant | Pending2FA:
        """Check a password. ``device`` is the device token a previous sign-in handed out (console
        cookie, or the ``Keygate-Device`` header of API clients): with it, or from an address the user
        signed in from before, guesses made elsewhere do not block this attempt."""
        if not isinstance(username, str) or not username or len(username) > MAX_USERNAME_LENGTH or not username.isprintable():
            raise InvalidRequest("UserName must be a non-empty string of at most 64 characters")
        if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD_LENGTH:
            raise InvalidRequest("Password must be a non-empty string of at most 256 characters")
        started = time.monotonic()
        self._healthy()
        user = await self._users.get_by_name(username)
        source = await self._guard.password_source(username, user, client_ip, device)
        try:
            # A throttled guesser is refused before the password is even looked at: no oracle, no CPU.
            # Known and unknown usernames are counted and refused alike.
            await self._guard.refuse_if_blocked(source)
            async with self._guard.hash_gate.slot(trusted=source.trusted is not None):
                # Verify even for an unknown user (None: against the dummy hash, made at server start), so
                # timing does not tell which usernames exist.
                ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
            if user is None or not ok:
                reason = "unknown user" if user is None else "wrong password"
                self._audit.record("auth.password", "failure", reason=reason,
                                   subject_user_id=user.user_id if user else None, client_ip=client_ip)
                raise await self._guard.password_failed(source, user, AuthenticationFailed(reason))
        except KeygateError:
            await self._pad(started)
            raise
        if user.is_locked(utcnow()):
            self._audit.record("auth.password", "failure", reason="user locked", subject_user_id=user.user_id, client_ip=client_ip)
            raise AuthenticationFailed("user locked", locked=True)
        if user.uses_2fa:
            token = await self._sessions.issue(user.user_id, SessionKind.PENDING_2FA, None, client_ip, lifetime=self._pending_lifetime)
            self._audit.record("auth.password", "pending-2fa", subject_user_id=user.user_id, client_ip=client_ip)
            return Pending2FA(token, user)
        return await self._password_session(user, client_ip, "auth.password", source)

    async def complete_2fa(self, pending_token: object, code: object, client_ip: str | None, device: object = None) -> SessionGrant:
        if not isinstance(pending_token, str) or not pending_token:
            raise InvalidRequest("Missing Pending2FaToken: send the token that the password sign-in returned")
        if isinstance(code, int) and not isinstance(code, bool):
            code = f"{code:06d}"
        if not isinstance(code, str) or not code.strip():
            raise InvalidRequest("Missing Code: send the 6-digit code from the authenticator app")
        started = time.monotonic()
        self._healthy()
        try:
            try:
                pending = await self._sessions.resolve(pending_token, kind=SessionKind.PENDING_2FA)
            except NotAuthorized:
                raise AuthenticationFailed("unknown or expired pending 2fa token") from None
            user = await self._users.require(pending.user_id)
            source = await self._guard.password_source(user.username, user, client_ip, device)
            await self._guard.refuse_if_blocked(source)
            # The code's time step is claimed once per user, atomically in the shared state: one code
            # signs in once, across every process, and an older code is refused after a newer one.
            step = matching_step(self._users.totp_secret(user), code) if user.sealed_totp_secret is not None else None
            if step is None or not await self._guard.claim_totp_step(user.user_id, step):
                reason = "wrong 2fa code" if step is None else "2fa code already used"
                self._audit.record("auth.2fa", "failure", reason=reason, subject_user_id=user.user_id, client_ip=client_ip)
                raise await self._guard.password_failed(source, user, AuthenticationFailed(reason))
        except KeygateError:
            await self._pad(started)
            raise
        async with self._units.begin() as unit:  # a pending token is good for one success only
            await self._sessions.end(unit, pending.token_hash)
        return await self._password_session(user, client_ip, "auth.2fa", source)

    async def _password_session(self, user: User, client_ip: str | None, action: str, source: PasswordSource) -> SessionGrant:
        device = await self._guard.password_succeeded(source, user)
        token = await self._sessions.issue(user.user_id, SessionKind.PASSWORD, None, client_ip)
        self._audit.record(action, subject_user_id=user.user_id, client_ip=client_ip)
        return SessionGrant(token, user, device=device)

    # ----- sessions ---------------------------------------------------------------------------
    async def principal_for_token(self, token: str, client_ip: str | None) -> Principal:
        """A session token is accepted if and only if, in this order (docs/security.md, "The grant rules"):

        1. it names a session that exists and has not expired (idle or absolute);
        2. that session is not a pending two-factor sign-in;
        3. the caller's address is the one that signed in (unless ``KEYGATE_BIND_SESSION_IP`` is off);
        4. its user exists, is not locked, and was not signed out everywhere (password reset, lock,
           "sign out everywhere") after the session began;
        5. for a key session: the key still exists, belongs to that user, has not expired, allows the
           caller's address, and the secret that made the session is still usable (the current one, or
           the previous one while a rotation grace lasts).

        A key session's rights are its key's permissions as they are now; a password session has its
        person's rights. Every input to this rule is either immutable or in a cache that every process
        invalidates from the change log, so a change anywhere is enforced here within its bound.

        The decision is remembered per token and client address (the principal memo) for at most
        ``MEMO_SECONDS`` (0.5 s; at most ``MEMO_ENTRIES`` entries, emptied when full): any change this
        process applies (its own, or one read from the change log) voids every remembered decision at
        once (``Coherence.generation``), a decision whose reads overlapped a change is not kept, and
        nothing that expires within the memo's life (session, key, rotation grace, timed lock) is
        remembered. Usage counts still count every request.
        """
        self._healthy()
        memo = self._memo.get(token)
        if memo is not None and memo[0] == self._coherence.generation and memo[2] == client_ip and time.monotonic() < memo[1]:
            principal = memo[3]
            if principal.api_key is not None:
                self._keys.mark_used(principal.api_key, client_ip)
            return principal
        generation = self._coherence.generation  # before any read: a change applied meanwhile voids the memo
        session = await self._sessions.resolve(token)
        if session.kind is SessionKind.PENDING_2FA:
            raise NotAuthorized("Not Authorized: finish two-factor sign-in with Authenticate2FA first")
        if self._bind_ip and session.client_ip is not None and client_ip != session.client_ip:
            raise NotAuthorized("Not Authorized: this session belongs to another IP address; authenticate again")
        user = await self._users.get(session.user_id)
        if user is None or (user.locked and user.is_locked(utcnow())) or user.session_revoked(session.created_at):
            raise NotAuthorized(_ENDED)
        now = utcnow()
        later = now + MEMO_TIMEDELTA
        if session.api_key is None:
            principal = Principal(user, ALL_PERMISSIONS, session.kind, None, session.token_hash)
        else:
            key = await self._keys.lookup(session.api_key)
            if key is None or key.user_id != user.user_id:
                raise NotAuthorized(_ENDED)
            if (not key.ip_allowlist.allows(client_ip) or key.expired(now) or key.idle_expired(now, self._key_max_idle_days)
                    or not key.accepts_session_serial(session.key_serial, now)):
                self._keys.note_refusal(key.api_key)
                raise NotAuthorized(_ENDED)
            self._keys.mark_used(key.api_key, client_ip)
            principal = Principal(user, key.permissions, SessionKind.KEY, key.api_key, session.token_hash)
            if key.expired(later) or key.idle_expired(later, self._key_max_idle_days) or not key.accepts_session_serial(session.key_serial, later):
                return principal  # something ends within the memo's life: not remembered
        if not user.locked and not session.expired(later, self._sessions.idle):
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[token] = (generation, time.monotonic() + MEMO_SECONDS, client_ip, principal)
        return principal

    async def resume(self, token: str, client_ip: str | None) -> SessionGrant:
        principal = await self.principal_for_token(token, client_ip)
        assert principal.user is not None
        return SessionGrant(token, principal.user)

    async def logout(self, principal: Principal, client_ip: str | None) -> None:
        """End the caller's own session, on every process."""
        async with self._units.begin() as unit:
            if principal.token_hash is not None:
                await self._sessions.end(unit, principal.token_hash)
            unit.audit(event("auth.logout", subject_user_id=principal.user_id, api_key=principal.api_key, client_ip=client_ip,
                             actor=principal))

    async def end_session(self, actor: Principal, token_hash: str) -> Session:
        """An administrator ends one session (any user's), on every process."""
        actor.require_admin()
        target = await self._sessions.get(token_hash) if isinstance(token_hash, str) and len(token_hash) <= 64 else None
        if target is None:
            raise NotFound("That session has already ended")
        async with self._units.begin() as unit:
            await self._sessions.end(unit, target.token_hash)
            unit.audit(event("session.end", actor=actor, subject_user_id=target.user_id, api_key=target.api_key,
                             detail=f"{target.kind.value} session ended by an administrator"))
        return target


class _Signer(NamedTuple):
    """A signer memo entry (``Authenticator._verify_now``): the key and user ``_verify_key`` accepted
    for one client address, what checks the key's signatures now, and ``UserId + APIKey`` (the
    signed message but its nonce)."""

    generation: int
    until: float
    user: User
    key: ApiKey
    material: KeyMaterial
    tail: bytes
    principal: Principal


MEMO_SECONDS = 0.5
MEMO_TIMEDELTA = timedelta(seconds=MEMO_SECONDS)
MEMO_ENTRIES = 65_536
_ENDED = "Not Authorized: session expired or unknown; authenticate again"
