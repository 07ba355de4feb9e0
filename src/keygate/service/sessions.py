"""Session tokens: issue, resolve, end.

The token is returned once and only its SHA-256 is stored. Resolving a token is the hot path: it is
answered from an in-process cache (see ``cache.TTLCache`` for the invalidation rule), and the
"last seen" time that drives idle expiry is written back in batches by the flusher.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

from keygate.domain.errors import NotAuthorized
from keygate.domain.permissions import Permission
from keygate.domain.sessions import MAX_TOKEN_LENGTH, Session, SessionKind, hash_token, new_token
from keygate.service.cache import TTLCache
from keygate.service.clock import utcnow
from keygate.store.repositories import SessionRepository

# Idle expiry is checked against the cached "last seen"; the database copy may lag by one flush.
TOUCH_RESOLUTION = timedelta(seconds=1)


class SessionManager:
    def __init__(self, repo: SessionRepository, idle: timedelta, absolute: timedelta, cache_ttl: float) -> None:
        self._repo = repo
        self.idle = idle
        self.absolute = absolute
        self._cache: TTLCache[str, Session] = TTLCache(cache_ttl)
        self._touched: dict[str, datetime] = {}

    async def issue(
        self,
        user_id: int,
        kind: SessionKind,
        permissions: frozenset[Permission],
        api_key: str | None,
        client_ip: str | None,
        lifetime: timedelta | None = None,
    ) -> str:
        token = new_token()
        now = utcnow()
        session = Session(
            token_hash=hash_token(token),
            user_id=user_id,
            kind=kind,
            permissions=permissions,
            api_key=api_key,
            client_ip=client_ip,
            created_at=now,
            last_seen_at=now,
            expires_at=now + (lifetime or self.absolute),
        )
        await self._repo.insert(session)
        self._cache.put(session.token_hash, session)
        return token

    async def resolve(self, token: str, kind: SessionKind | None = None) -> Session:
        """Return the live session for ``token`` or raise ``NotAuthorized``; counts as activity."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthorized("Not Authorized: session token is missing or malformed")
        token_hash = hash_token(token)
        hit, session = self._cache.get(token_hash)
        if not hit:
            session = await self._repo.get(token_hash)
            self._cache.put(token_hash, session)
        now = utcnow()
        if session is None or not hmac.compare_digest(session.token_hash, token_hash):
            raise NotAuthorized("Not Authorized: session expired or unknown; authenticate again")
        if session.expired(now, self.idle):
            await self.end_hash(token_hash)
            raise NotAuthorized("Not Authorized: session expired or unknown; authenticate again")
        if kind is not None and session.kind is not kind:
            raise NotAuthorized("Not Authorized: session expired or unknown; authenticate again")
        if now - session.last_seen_at >= TOUCH_RESOLUTION:
            session = session.touched(now)
            self._cache.put(token_hash, session)
            self._touched[token_hash] = now
        return session

    async def end(self, token: str) -> bool:
        return await self.end_hash(hash_token(token))

    async def end_hash(self, token_hash: str) -> bool:
        self._cache.put(token_hash, None)
        self._touched.pop(token_hash, None)
        return await self._repo.delete(token_hash)

    def forget_key(self, api_key: str) -> None:
        """Called after the store has deleted a key's sessions: drop them from the cache too."""
        self._cache.evict_where(lambda s: s.api_key == api_key)

    async def end_for_user(self, user_id: int) -> int:
        self._cache.evict_where(lambda s: s.user_id == user_id)
        return await self._repo.delete_for_user(user_id)

    async def list(self, user_id: int | None = None) -> list[Session]:
        await self.flush()
        now = utcnow()
        return [s for s in await self._repo.list(user_id) if not s.expired(now, self.idle)]

    async def flush(self) -> None:
        touched, self._touched = self._touched, {}
        await self._repo.touch_many(touched)

    async def purge_expired(self) -> int:
        now = utcnow()
        return await self._repo.purge_expired(now, now - self.idle)
