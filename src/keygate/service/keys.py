"""API keys: create (the secret is returned once), list, edit, delete, and the hot-path lookup."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from keygate.domain.errors import Conflict, NotFound
from keygate.domain.iprules import IpAllowlist
from keygate.domain.keys import ApiKey, clean_label, new_api_key, new_nonce, new_secret
from keygate.domain.permissions import Permission, format_permissions
from keygate.domain.secretbox import SecretBox
from keygate.service.audit import AuditLog
from keygate.service.cache import TTLCache
from keygate.service.clock import utcnow
from keygate.service.principal import Principal
from keygate.service.sessions import SessionManager
from keygate.service.users import UserManager
from keygate.store.repositories import KeyRepository

MAX_KEYS_PER_USER = 50


def secret_context(api_key: str) -> str:
    """AES-GCM associated data: a sealed secret opens only for the key it was made for."""
    return f"apikey:{api_key}"


@dataclass(frozen=True)
class CreatedKey:
    """The one and only time the secret leaves keygate."""

    key: ApiKey
    secret: str

    def reveal(self) -> dict[str, object]:
        view = self.key.public_view()
        view["APISecret"] = self.secret
        return view


class KeyManager:
    def __init__(
        self,
        repo: KeyRepository,
        box: SecretBox,
        users: UserManager,
        sessions: SessionManager,
        audit: AuditLog,
        cache_ttl: float,
    ) -> None:
        self._repo = repo
        self._box = box
        self._users = users
        self._sessions = sessions
        self._audit = audit
        self._cache: TTLCache[str, ApiKey] = TTLCache(cache_ttl)
        self._used: dict[str, datetime] = {}

    # ----- hot path -------------------------------------------------------------------------
    async def lookup(self, api_key: str) -> ApiKey | None:
        hit, key = self._cache.get(api_key)
        if not hit:
            key = await self._repo.get(api_key)
            self._cache.put(api_key, key)
        return key

    def secret_of(self, key: ApiKey) -> str:
        return self._box.open(key.sealed_secret, secret_context(key.api_key))

    def mark_used(self, api_key: str) -> None:
        self._used[api_key] = utcnow()

    async def flush(self) -> None:
        used, self._used = self._used, {}
        await self._repo.record_use(used)

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

    async def create(
        self,
        actor: Principal,
        user_id: int,
        permissions: frozenset[Permission],
        ip_allowlist: IpAllowlist,
        label: str = "",
    ) -> CreatedKey:
        actor.require_password_session()
        await self._target_user(actor, user_id)
        label = clean_label(label)
        if len(await self._repo.list(user_id)) >= MAX_KEYS_PER_USER:
            raise Conflict(f"A user may hold at most {MAX_KEYS_PER_USER} API keys; delete one first")
        now = utcnow()
        api_key = new_api_key()
        secret = new_secret()
        key = ApiKey(
            api_key=api_key,
            user_id=user_id,
            label=label,
            permissions=permissions,
            ip_allowlist=ip_allowlist,
            sealed_secret=self._box.seal(secret, secret_context(api_key)),
            nonce=new_nonce(),
            created_at=now,
            updated_at=now,
        )
        await self._repo.insert(key)
        self._cache.evict(api_key)
        self._audit.record(
            "key.create",
            actor_user_id=actor.user_id,
            subject_user_id=user_id,
            api_key=api_key,
            detail=_describe(key),
        )
        return CreatedKey(key, secret)

    async def list(self, actor: Principal, user_id: int) -> list[ApiKey]:
        await self._target_user(actor, user_id)
        return await self._repo.list(user_id)

    async def list_all(self, actor: Principal) -> list[ApiKey]:
        actor.require_admin()
        return await self._repo.list()

    async def update(
        self,
        actor: Principal,
        user_id: int,
        api_key: str,
        *,
        permissions: frozenset[Permission] | None = None,
        ip_allowlist: IpAllowlist | None = None,
        label: str | None = None,
    ) -> tuple[ApiKey, bool]:
        """Edit a key. Returns the key and whether its sessions were ended (rights changed)."""
        actor.require_password_session()
        key = await self._owned_key(actor, user_id, api_key)
        changed = replace(
            key,
            permissions=key.permissions if permissions is None else permissions,
            ip_allowlist=key.ip_allowlist if ip_allowlist is None else ip_allowlist,
            label=key.label if label is None else clean_label(label),
            updated_at=utcnow(),
        )
        rights_changed = changed.permissions != key.permissions or changed.ip_allowlist != key.ip_allowlist
        await self._repo.save(changed, revoke_sessions=rights_changed)
        self._cache.evict(api_key)
        if rights_changed:
            self._sessions.forget_key(api_key)
        self._audit.record(
            "key.update",
            actor_user_id=actor.user_id,
            subject_user_id=user_id,
            api_key=api_key,
            detail=_describe(changed) + ("; sessions ended" if rights_changed else ""),
        )
        return changed, rights_changed

    async def delete(self, actor: Principal, user_id: int, api_key: str) -> None:
        actor.require_password_session()
        key = await self._owned_key(actor, user_id, api_key)
        await self._repo.delete(key.api_key)
        self._cache.put(key.api_key, None)
        self._sessions.forget_key(key.api_key)
        self._audit.record("key.delete", actor_user_id=actor.user_id, subject_user_id=user_id, api_key=key.api_key)

    async def rotate_master_key(self, new_box: SecretBox) -> int:
        """Re-seal every secret under ``new_box``; compare-and-set per row, safe while serving."""
        count = 0
        for api_key, sealed in await self._repo.all_sealed():
            if new_box.sealed_with_current(sealed):
                continue
            plain = new_box.open(sealed, secret_context(api_key))
            if await self._repo.replace_sealed(api_key, sealed, new_box.seal(plain, secret_context(api_key))):
                count += 1
            self._cache.evict(api_key)
        return count

    def invalidate(self, api_key: str) -> None:
        self._cache.evict(api_key)


def _describe(key: ApiKey) -> str:
    perms = ",".join(format_permissions(key.permissions)) or "read-only"
    ips = key.ip_allowlist.serialize() or "any IP"
    return f"label={key.label!r}; permissions={perms}; ip_allowlist={ips}"
