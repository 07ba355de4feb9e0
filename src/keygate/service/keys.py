"""API keys: create (the secret is returned once), list, edit, rotate, delete, and the hot-path lookup.

The hot-path cache (``TTLCache``, key -> ``ApiKey``) has this invalidation rule: every change of a key
writes a ``key`` row to the change log in the change's own transaction, and every process drops its
copy when it reads that row (``store.changes``: within 0.1 s on SQLite, at once on PostgreSQL), and
this process right after the commit. Its bound: ``KEYGATE_CACHE_TTL_SECONDS`` per entry, 100 000
entries. Because a key session's rights are read from this cache at every use (never copied into the
session), a change of permissions or allowlist reaches every live session within the same bound.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from keygate.domain.errors import Conflict, InvalidRequest, NotFound, ServiceUnavailable
from keygate.domain.iprules import IpAllowlist
from keygate.domain.key_material import KeyMaterial, KeyType, ed25519_material, fingerprint, hmac_material
from keygate.domain.keys import ApiKey, clean_label, new_api_key, new_nonce, new_secret
from keygate.domain.paging import DEFAULT_PAGE_SIZE, Page, Search, check_paging, parse_search
from keygate.domain.permissions import Permission, format_permissions
from keygate.domain.replay import ReplayMode, nonce_as_u64
from keygate.domain.secretbox import SecretBox
from keygate.domain.sessions import SessionKind
from keygate.domain.signature import SigningKey
from keygate.domain.usage import KEEP_DAYS, MAX_HOURS, KeyUsage, fill_hours, hour_of, hour_start
from keygate.service.audit import event
from keygate.service.cache import TTLCache
from keygate.service.clock import utcnow
from keygate.service.coherence import Coherence
from keygate.service.principal import Principal
from keygate.service.sessions import SessionManager
from keygate.service.users import UserManager
from keygate.store.repositories import KeyRepository
from keygate.store.shared_state import SharedState
from keygate.store.unit import Units

log = logging.getLogger("keygate.keys")

MAX_GRACE_SECONDS = 30 * 86400


@dataclass(frozen=True)
class KeyPolicy:
    """Operator options for keys (see the README's configuration table)."""

    default_replay_mode: ReplayMode = ReplayMode.WINDOW
    require_allowlist_for_withdraw: bool = False
    max_idle_days_without_allowlist: int = 0
    require_v2_for_new_keys: bool = False  # new keys accept Signature v2 (RFC 9421) only

MAX_KEYS_PER_USER = 50
MAX_PENDING_USAGE = 100_000  # (key, hour) pairs held between flushes; past it, a new pair is not counted
MAX_ADDRESS = 45  # the longest canonical IPv6 text (with an embedded IPv4); anything longer is not kept


def secret_context(api_key: str) -> str:
    """AES-GCM associated data: a sealed secret opens only for the key it was made for."""
    return f"apikey:{api_key}"


@dataclass(frozen=True)
class CreatedKey:
    """The one and only time the secret leaves keygate. An ed25519 key has none (``secret`` is None):
    its holder made the private key, and keygate never saw it."""

    key: ApiKey
    secret: str | None

    def reveal(self) -> dict[str, object]:
        view = self.key.public_view()
        if self.secret is not None:
            view["APISecret"] = self.secret
        return view


class KeyManager:
    def __init__(
        self,
        repo: KeyRepository,
        box: SecretBox,
        users: UserManager,
        sessions: SessionManager,
        units: Units,
        cache_ttl: float,
        state: SharedState,
        policy: KeyPolicy,
        coherence: Coherence | None = None,
        unique_window_seconds: int = 86400,
    ) -> None:
        self._state = state
        self.policy = policy
        self._repo = repo
        self._box = box
        self._users = users
        self._sessions = sessions
        self._units = units
        self._unique_window = unique_window_seconds
        # api_key -> (sealed secret or public key, plain secret or None, prepared HMAC or None, key material)
        self._opened: dict[str, tuple[bytes, str | None, SigningKey | None, KeyMaterial]] = {}
        self._cache: TTLCache[str, ApiKey] = TTLCache(cache_ttl, name="keys")
        (coherence or Coherence()).on("key", self._forget_here, self._forget_all)
        self._used: dict[str, tuple[float, str | None]] = {}  # api key -> (Unix time, client address) of its last use here
        # (api key, hour number) -> [requests, refusals] counted here since the last flush
        self._counts: dict[tuple[str, float], list[int]] = {}  # the hour as unix_time // 3600
        self.usage_dropped = 0  # counts not kept because the map was full (the flush empties it every second)
        self._seen_nonces: dict[str, int] = {}  # compatible keys: the highest numeric nonce accepted here

    def _forget_here(self, api_key: str) -> None:
        self._cache.evict(api_key)
        self._opened.pop(api_key, None)

    def _forget_all(self) -> None:
        self._cache.clear()
        self._opened.clear()

    # ----- hot path -------------------------------------------------------------------------
    async def lookup(self, api_key: str) -> ApiKey | None:
        hit, key = self._cache.get(api_key)
        return key if hit else await self._cache.load(api_key, self._repo.get)

    def _open(self, key: ApiKey) -> tuple[bytes, str | None, SigningKey | None, KeyMaterial]:
        # Opened once per sealed value (or public key): the cache hands out one ApiKey object until the
        # key changes (a new secret, a re-seal or a reload brings new bytes), so the entry is exact by
        # identity. The plain secret then stays in memory as long as the master key that opens it does.
        stored = key.sealed_secret if key.key_type is KeyType.HMAC else key.public_key
        assert stored is not None, "an hmac key has a sealed secret, an ed25519 key a public key"
        opened = self._opened.get(key.api_key)
        if opened is None or opened[0] is not stored:
            if len(self._opened) >= 10_000:
                self._opened.clear()
            if key.key_type is KeyType.HMAC:
                secret = self._box.open(stored, secret_context(key.api_key))
                opened = (stored, secret, SigningKey(secret), hmac_material(secret))
            else:
                opened = (stored, None, None, ed25519_material(stored))
            self._opened[key.api_key] = opened
        return opened

    def secret_of(self, key: ApiKey) -> str:
        """The plain secret of an hmac key (an ed25519 key has none)."""
        secret = self._open(key)[1]
        assert secret is not None, "an ed25519 key has no secret"
        return secret

    def signing_key_of(self, key: ApiKey) -> SigningKey:
        """The hmac key's current secret, ready to check APEX signatures (remembered like the secret)."""
        signing = self._open(key)[2]
        assert signing is not None, "an ed25519 key has no secret"
        return signing

    def material_of(self, key: ApiKey) -> KeyMaterial:
        """What checks the key's signatures now (``domain.key_material.verify``), of either key type;
        prepared once per key and remembered like the secret."""
        return self._open(key)[3]

    def previous_material_of(self, key: ApiKey) -> KeyMaterial | None:
        """What checked the key's signatures before its last rotation, while the rotation grace lasts
        (``None`` otherwise). Built at each call: only clients that have not switched yet use it."""
        if not key.previous_secret_usable(utcnow()):
            return None
        if key.key_type is KeyType.ED25519:
            return ed25519_material(key.previous_public_key) if key.previous_public_key is not None else None
        return hmac_material(self.previous_secret_of(key))

    def previous_secret_of(self, key: ApiKey) -> str:
        assert key.sealed_previous_secret is not None
        return self._box.open(key.sealed_previous_secret, secret_context(key.api_key))

    def mark_used(self, api_key: str, client_ip: str | None = None) -> None:
        """An accepted request of the key (signed call, key sign-in, key-session call).

        On every accepted request: written inline (a clock read, a tuple, a dictionary look-up and an
        increment), since each function call here is a measurable share of a signed call's cost.
        """
        now = time.time()  # a datetime only once per key and flush, not per request
        self._used[api_key] = (now, client_ip)
        slot = self._counts.get((api_key, now // 3600))
        if slot is None:
            slot = self._new_slot(api_key, now)
            if slot is None:
                return
        slot[0] += 1

    def note_refusal(self, api_key: str) -> None:
        """A refused request that named this (existing) key."""
        now = time.time()
        slot = self._counts.get((api_key, now // 3600)) or self._new_slot(api_key, now)
        if slot is not None:
            slot[1] += 1

    def _new_slot(self, api_key: str, now: float) -> list[int] | None:
        if len(self._counts) >= MAX_PENDING_USAGE:
            self.usage_dropped += 1
            return None
        slot = self._counts[(api_key, now // 3600)] = [0, 0]
        return slot

    def note_compatible_nonce(self, api_key: str, nonce: str) -> None:
        """A ``compatible`` key accepted ``nonce``: remember the highest, so that a later switch to a
        strict mode refuses every header set this mode accepted (written back with the last use)."""
        value = nonce_as_u64(nonce)
        if value is not None and value > self._seen_nonces.get(api_key, -1):
            if len(self._seen_nonces) >= 100_000:
                self._seen_nonces.clear()
            self._seen_nonces[api_key] = value

    @property
    def pending_uses(self) -> int:
        """Keys whose last use is not yet written (a queue depth in the metrics)."""
        return len(self._used)

    async def flush(self) -> None:
        used, self._used = self._used, {}
        seen, self._seen_nonces = self._seen_nonces, {}
        counts, self._counts = self._counts, {}
        try:
            await self._repo.record_use({k: (datetime.fromtimestamp(at, timezone.utc), _canonical(ip)) for k, (at, ip) in used.items()})
            await self._repo.add_usage({(k, hour_start(int(h))): (c[0], c[1]) for (k, h), c in counts.items()})
        except BaseException:
            self._restore(counts)  # kept for the next flush (an outage), never lost quietly
            for api_key, last in used.items():
                self._used.setdefault(api_key, last)  # a newer use made meanwhile wins
            self._restore_seen(seen)
            raise
        items = list(seen.items())
        for done, (api_key, value) in enumerate(items):
            try:
                await self._state.raise_highest_nonce(api_key, value)
            except BaseException:
                self._restore_seen(dict(items[done:]))
                raise

    def _restore_seen(self, seen: dict[str, int]) -> None:
        """Highest nonces not written yet, kept for the next flush: a mode switch's floor is built from
        them (``note_compatible_nonce``), so losing one to an outage would let a switch accept a replay."""
        for api_key, value in seen.items():
            if value > self._seen_nonces.get(api_key, -1):
                self._seen_nonces[api_key] = value

    def _restore(self, counts: dict[tuple[str, float], list[int]]) -> None:
        for pair, (requests, refusals) in counts.items():
            slot = self._counts.get(pair)
            if slot is None:
                if len(self._counts) >= MAX_PENDING_USAGE:
                    self.usage_dropped += requests + refusals
                    continue
                slot = self._counts[pair] = [0, 0]
            slot[0] += requests
            slot[1] += refusals

    async def purge_usage(self) -> int:
        """Drop usage hours older than ``KEEP_DAYS`` (the periodic purge calls this)."""
        return await self._repo.purge_usage(utcnow() - timedelta(days=KEEP_DAYS))

    async def usage(self, actor: Principal, api_key: str, user_id: int | None = None, hours: int = MAX_HOURS) -> KeyUsage:
        """Requests and refusals of a key per hour, over the last ``hours`` (at most 7 days), and its last use.

        The key's owner and an administrator may read it; a key (its session or a signed request)
        only its own. Anyone else, and a ``user_id`` that does not own the key, gets ``NotFound``,
        as for a key that does not exist. Counts reach the database within a second of the request.
        """
        if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= MAX_HOURS:
            raise InvalidRequest(f"Hours must be an integer from 1 to {MAX_HOURS}")
        if actor.via is SessionKind.KEY and actor.api_key != api_key:
            raise NotFound("API key not found")
        well_formed = isinstance(api_key, str) and len(api_key) <= 64 and api_key.isascii() and api_key.isprintable()
        key = await self._repo.get(api_key) if well_formed else None
        if key is None or not actor.may_act_for(key.user_id) or (user_id is not None and user_id != key.user_id):
            raise NotFound("API key not found")
        now = utcnow()
        counts = await self._repo.usage(api_key, hour_of(now) - timedelta(hours=hours - 1))
        return KeyUsage(api_key, key.user_id, key.last_used_at, key.last_used_ip, fill_hours(counts, now, hours))

    async def usage_of(self, actor: Principal, keys: Sequence[ApiKey], hours: int = MAX_HOURS) -> dict[str, KeyUsage]:
        """``usage`` for keys the caller already listed (one query for all): the console's key tables.
        Keys the actor may not see are left out."""
        if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= MAX_HOURS:
            raise InvalidRequest(f"Hours must be an integer from 1 to {MAX_HOURS}")
        visible = [k for k in keys if actor.may_act_for(k.user_id)
                   and (actor.via is not SessionKind.KEY or actor.api_key == k.api_key)]
        now = utcnow()
        counts = await self._repo.usage_many([k.api_key for k in visible], hour_of(now) - timedelta(hours=hours - 1))
        return {k.api_key: KeyUsage(k.api_key, k.user_id, k.last_used_at, k.last_used_ip,
                                    fill_hours(counts[k.api_key], now, hours)) for k in visible}

    # ----- management -----------------------------------------------------------------------
    async def _target_user(self, actor: Principal, user_id: int) -> int:
        if not actor.may_act_for(user_id):
            # Same answer as for a user that does not exist: another user's keys are not ours to see.
            raise NotFound(f"User {user_id} not found")
        await self._users.require(user_id)
        return user_id

    async def _owned_key(self, actor: Principal, user_id: int, api_key: str) -> ApiKey:
        await self._target_user(actor, user_id)
        well_formed = isinstance(api_key, str) and len(api_key) <= 64 and api_key.isascii() and api_key.isprintable()
        key = await self._repo.get(api_key) if well_formed else None
        if key is None or key.user_id != user_id:
            raise NotFound("API key not found")
        return key

    async def owner_of(self, actor: Principal, api_key: str) -> int:
        """The user id that owns ``api_key``, for an actor that may see it (``NotFound`` otherwise)."""
        well_formed = isinstance(api_key, str) and len(api_key) <= 64 and api_key.isascii() and api_key.isprintable()
        key = await self._repo.get(api_key) if well_formed else None
        if key is None or not actor.may_act_for(key.user_id):
            raise NotFound("API key not found")
        return key.user_id

    async def create(
        self,
        actor: Principal,
        user_id: int,
        permissions: frozenset[Permission],
        ip_allowlist: IpAllowlist,
        label: object = "",
        *,
        replay_mode: ReplayMode | None = None,
        expires_at: datetime | None = None,
        key_type: KeyType = KeyType.HMAC,
        public_key: bytes | None = None,
        requires_v2: bool | None = None,
    ) -> CreatedKey:
        """Create a key. An ``hmac`` key gets a new secret, returned once; an ``ed25519`` key takes
        ``public_key`` (raw 32 bytes, see ``domain.key_material.parse_public_key``) and has no secret."""
        actor.require_password_session()
        if key_type is KeyType.ED25519 and public_key is None:
            raise InvalidRequest("Missing PublicKey: an ed25519 key needs the Ed25519 public key of its holder")
        if key_type is KeyType.HMAC and public_key is not None:
            raise InvalidRequest('PublicKey is for KeyType "ed25519" only: an hmac key gets a secret from keygate')
        if public_key is not None:
            ed25519_material(public_key)  # refuses anything but the 32 bytes of a public key
        await self._target_user(actor, user_id)
        label = clean_label(label)
        self._check_policy(permissions, ip_allowlist)
        now = utcnow()
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("ExpiresAt must be in the future")
        if len(await self._repo.list(user_id)) >= MAX_KEYS_PER_USER:
            raise Conflict(f"A user may hold at most {MAX_KEYS_PER_USER} API keys; delete one first")
        api_key = new_api_key()
        secret = new_secret() if key_type is KeyType.HMAC else None
        key = ApiKey(
            api_key=api_key,
            user_id=user_id,
            label=label,
            permissions=permissions,
            ip_allowlist=ip_allowlist,
            sealed_secret=self._box.seal(secret, secret_context(api_key)) if secret is not None else None,
            key_type=key_type,
            public_key=public_key,
            nonce=new_nonce(),
            created_at=now,
            updated_at=now,
            replay_mode=replay_mode or self.policy.default_replay_mode,
            expires_at=expires_at,
            requires_v2=self.policy.require_v2_for_new_keys if requires_v2 is None else requires_v2,
        )
        async with self._units.begin() as unit:
            await self._repo.insert(key, unit.conn)
            unit.audit(event("key.create", actor=actor, subject_user_id=user_id, api_key=api_key, detail=_describe(key)))
            unit.changed("key", api_key)  # a process may remember this key as unknown
        return CreatedKey(key, secret)

    async def list(self, actor: Principal, user_id: int) -> list[ApiKey]:
        await self._target_user(actor, user_id)
        return await self._repo.list(user_id)

    async def page(self, actor: Principal, search: str = "", page: int = 1, size: int = DEFAULT_PAGE_SIZE,
                   user_id: int | None = None) -> Page[ApiKey]:
        """A page of keys. Every user's (administrators and the operator): by owner and age, the newest
        first; ``search``
        is a user id (a number: its keys, then the keys starting with its digits), or a username or
        API-key prefix (the keys starting with it first).
        With ``user_id``: that user's keys only (themself or an administrator), the newest first."""
        page, size = check_paging(page, size)
        if user_id is not None:
            await self._target_user(actor, user_id)
            wanted = Search(user_id=user_id)
        else:
            actor.require_admin()
            wanted = parse_search(search)
        found = await self._repo.page(wanted, (page - 1) * size, size + 1)
        return Page(found[:size], page, size, len(found) > size)

    async def update(
        self,
        actor: Principal,
        user_id: int,
        api_key: str,
        *,
        permissions: frozenset[Permission] | None = None,
        ip_allowlist: IpAllowlist | None = None,
        label: str | None = None,
        replay_mode: ReplayMode | None = None,
        expires_at: datetime | None | bool = False,
        requires_v2: bool | None = None,
    ) -> ApiKey:
        """Edit a key. Its live sessions take the new rights at once, on every process.

        ``expires_at=False`` keeps the expiry; ``None`` removes it.
        """
        actor.require_password_session()
        key = await self._owned_key(actor, user_id, api_key)
        now = utcnow()
        if isinstance(expires_at, datetime) and expires_at <= now:
            raise InvalidRequest("ExpiresAt must be in the future")
        changed = replace(
            key,
            permissions=key.permissions if permissions is None else permissions,
            ip_allowlist=key.ip_allowlist if ip_allowlist is None else ip_allowlist,
            label=key.label if label is None else clean_label(label),
            replay_mode=key.replay_mode if replay_mode is None else replay_mode,
            expires_at=key.expires_at if expires_at is False else expires_at,  # type: ignore[arg-type]
            requires_v2=key.requires_v2 if requires_v2 is None else requires_v2,
            updated_at=now,
        )
        self._check_policy(changed.permissions, changed.ip_allowlist)
        if changed.requires_v2 and not key.requires_v2:
            # From now on only Signature v2 signs in: every session of the key ends on every process
            # (made with an APEX signature, it would outlive the rule), as after a rotation without
            # grace: a new serial, and any rotation grace ends (the key's holders sign in again, with v2).
            changed = replace(changed, secret_serial=key.secret_serial + 1, sealed_previous_secret=None,
                              previous_public_key=None, previous_secret_expires_at=None)
        if changed.replay_mode is not key.replay_mode and key.replay_mode is ReplayMode.WINDOW:
            await self._state.end_window_lease(api_key)  # nothing decided in memory beside the new mode
        async with self._units.begin() as unit:
            remembering = (ReplayMode.UNIQUE, ReplayMode.WINDOW)
            if changed.replay_mode in remembering and key.replay_mode not in remembering:
                # The other modes may have accepted any nonce up to the key's highest: the modes that
                # remember nonces (not every one of those) refuse them for as long as their window lasts.
                changed = replace(changed, replay_floor=await self._state.highest_nonce(api_key),
                                  replay_floor_until=now + timedelta(seconds=self._unique_window))
            await self._repo.save(changed, unit.conn)
            unit.audit(event("key.update", actor=actor, subject_user_id=user_id, api_key=api_key, detail=_describe(changed)))
            unit.changed("key", api_key)
        return changed

    async def change_permissions(
        self, actor: Principal, user_id: int, api_key: str, permissions: frozenset[Permission], *, grant: bool
    ) -> ApiKey:
        """Add (``grant``) or remove some permissions of a key, keeping the others: APEX's
        ``AddUserAPIKeyPermission`` / ``RemoveUserAPIKeyPermission``. The same rules and effects as
        ``update``; adding a permission the key holds (or removing one it lacks) changes nothing."""
        actor.require_password_session()
        key = await self._owned_key(actor, user_id, api_key)
        wanted = key.permissions | permissions if grant else key.permissions - permissions
        if wanted == key.permissions:
            return key
        return await self.update(actor, user_id, api_key, permissions=wanted)

    async def delete(self, actor: Principal, user_id: int, api_key: str) -> None:
        actor.require_password_session()
        key = await self._owned_key(actor, user_id, api_key)
        async with self._units.begin() as unit:
            await self._repo.delete(key.api_key, unit.conn)
            unit.audit(event("key.delete", actor=actor, subject_user_id=user_id, api_key=key.api_key))
            unit.changed("key", key.api_key)
        try:
            await self._state.forget_key(key.api_key)  # its replay state (the database's went with the row)
        except ServiceUnavailable:  # Redis away: deleted all the same; what is left is never read (keys are never reused)
            log.warning("a deleted key's replay state could not be removed from the shared state store")

    async def rotate_secret(self, actor: Principal, user_id: int, api_key: str, grace_seconds: int = 0,
                            public_key: bytes | None = None) -> CreatedKey:
        """Issue a new secret and nonce for an hmac key, shown once; for an ed25519 key, take its new
        ``public_key`` (required) and issue a new nonce. The old secret or public key, and the sessions
        it made, keep working for ``grace_seconds`` (0: not at all), so clients can switch without downtime.

        The key's replay state is kept: a header set accepted before the rotation stays refused.
        """
        actor.require_password_session()
        if not isinstance(grace_seconds, int) or isinstance(grace_seconds, bool) or not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidRequest(f"GraceSeconds must be an integer from 0 to {MAX_GRACE_SECONDS}")
        key = await self._owned_key(actor, user_id, api_key)
        now = utcnow()
        grace = now + timedelta(seconds=grace_seconds) if grace_seconds else None
        secret: str | None = None
        if key.key_type is KeyType.ED25519:
            if public_key is None:
                raise InvalidRequest("Missing PublicKey: rotating an ed25519 key takes its new public key")
            ed25519_material(public_key)
            if public_key == key.public_key:
                raise InvalidRequest("PublicKey is the key's current public key: rotation takes a new one")
            rotated = replace(key, public_key=public_key, previous_public_key=key.public_key if grace_seconds else None)
            detail = f"grace_seconds={grace_seconds}; key_type=ed25519; public_key={fingerprint(public_key)}"
        else:
            if public_key is not None:
                raise InvalidRequest('PublicKey is for KeyType "ed25519" only: an hmac key gets a new secret from keygate')
            secret = new_secret()
            rotated = replace(key, sealed_secret=self._box.seal(secret, secret_context(api_key)),
                              sealed_previous_secret=key.sealed_secret if grace_seconds else None)
            detail = f"grace_seconds={grace_seconds}"
        rotated = replace(rotated, nonce=new_nonce(), previous_secret_expires_at=grace,
                          secret_serial=key.secret_serial + 1, updated_at=now)
        async with self._units.begin() as unit:
            await self._repo.save(rotated, unit.conn, end_sessions=grace_seconds == 0)
            unit.audit(event("key.rotate", actor=actor, subject_user_id=user_id, api_key=api_key, detail=detail))
            unit.changed("key", api_key)
        return CreatedKey(rotated, secret)

    async def reseal_all(self, new_box: SecretBox, old_box: SecretBox) -> int:
        """Re-seal every key secret (current and in-grace previous) under ``new_box``.

        Compare-and-set per row, so it is safe while servers keep serving and changing keys.
        """
        count = 0
        for column in ("sealed_secret", "sealed_previous_secret"):
            for api_key, sealed in await self._repo.all_sealed(column):
                if new_box.sealed_with_current(sealed):
                    continue
                plain = old_box.open(sealed, secret_context(api_key))
                if await self._repo.replace_sealed(api_key, sealed, new_box.seal(plain, secret_context(api_key)), column):
                    count += 1
                async with self._units.begin() as unit:
                    unit.changed("key", api_key)
        return count

    def _check_policy(self, permissions: frozenset[Permission], ip_allowlist: IpAllowlist) -> None:
        if self.policy.require_allowlist_for_withdraw and Permission.WITHDRAW in permissions and ip_allowlist.allows_any:
            raise InvalidRequest("Keys with the Withdraw permission must have an IP allowlist (operator policy)")


def _canonical(ip: str | None) -> str | None:
    """The address as ``ipaddress`` writes it (IPv6 compressed, lower case), or None if it is not one that fits."""
    if not ip:
        return None
    try:
        text = str(ipaddress.ip_address(ip))
    except ValueError:
        return None
    return text if len(text) <= MAX_ADDRESS else None


def _describe(key: ApiKey) -> str:
    perms = ",".join(format_permissions(key.permissions)) or "read-only"
    ips = key.ip_allowlist.serialize() or "any IP"
    expiry = key.expires_at.isoformat() if key.expires_at else "never"
    kind = f"; key_type={key.key_type.value}"
    if key.public_key is not None:
        kind += f"; public_key={fingerprint(key.public_key)}"
    return f"label={key.label!r}; permissions={perms}; ip_allowlist={ips}; replay_mode={key.replay_mode.value}; expires={expiry}{kind}" + ("; signature=v2 only" if key.requires_v2 else "")
