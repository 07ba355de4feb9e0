"""Session tokens: issue, resolve, end.

The token is returned once and only its SHA-256 is stored. Resolving a token is the hot path: it is
answered from an in-process cache (see ``cache.TTLCache`` for the invalidation rule), and the
"last seen" time that drives idle expiry is written back in batches by the flusher.

Issuing is the other hot path (every ``AuthenticateUser`` makes a session). It uses group commit:
``issue`` queues the new row and waits until it is written; one writer task inserts everything
queued so far in one transaction, and sessions issued while that transaction runs form the next
batch. So a token is only handed out once its session is in the database (any node or worker finds
it, and a crash loses nothing), yet under load many sessions share one commit.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime, timedelta

from keygate.domain.errors import NotAuthorized
from keygate.domain.permissions import Permission
from keygate.domain.sessions import MAX_TOKEN_LENGTH, Session, SessionKind, hash_token, new_token
from keygate.service.cache import TTLCache
from keygate.service.coherence import Coherence
from keygate.service.clock import utcnow
from keygate.store.redis_bus import RedisSessionTier
from keygate.store.repositories import SessionRepository

# Idle expiry is checked against the cached "last seen"; the database copy may lag by one flush.
TOUCH_RESOLUTION = timedelta(seconds=1)


class SessionManager:
    def __init__(self, repo: SessionRepository, idle: timedelta, absolute: timedelta, cache_ttl: float,
                 coherence: Coherence | None = None, tier: RedisSessionTier | None = None) -> None:
        self._repo = repo
        self._coherence = coherence or Coherence()
        self._tier = tier  # with Redis: sessions shared by every node, in front of the database
        self._coherence.on("session", self._evict_hashes, lambda: self._cache.clear())
        self.idle = idle
        self.absolute = absolute
        self._cache: TTLCache[str, Session] = TTLCache(cache_ttl)
        self._touched: dict[str, datetime] = {}
        self._queued: list[tuple[Session, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

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
        await self._persist(session)
        if self._tier is not None:
            await self._tier.put(session, self.idle)
        self._cache.put(session.token_hash, session)
        return token

    async def _persist(self, session: Session) -> None:
        """Queue the row for the writer and wait until it is committed (or failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((session, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued(), name="keygate-session-writer")
        await done

    async def _write_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                await self._repo.insert_many([s for s, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch, exc)
                    continue
                # One bad row (say, its user was deleted meanwhile) must not fail the others.
                for item in batch:
                    try:
                        await self._repo.insert(item[0])
                    except Exception as row_exc:
                        _settle([item], row_exc)
                    else:
                        _settle([item])
            else:
                _settle(batch)

    async def resolve(self, token: str, kind: SessionKind | None = None) -> Session:
        """Return the live session for ``token`` or raise ``NotAuthorized``; counts as activity."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthorized("Not Authorized: session token is missing or malformed")
        token_hash = hash_token(token)
        hit, session = self._cache.get(token_hash)
        if not hit:
            session = await self._tier.get(token_hash) if self._tier is not None else None
            if session is None:
                session = await self._repo.get(token_hash)
                if session is not None and self._tier is not None:
                    await self._tier.put(session, self.idle)
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
        ended = await self._repo.delete(token_hash)
        await self.forget([token_hash])
        return ended

    async def forget(self, token_hashes: list[str]) -> None:
        """Called after the store deleted these sessions: drop them from every cache, on every node."""
        if not token_hashes:
            return
        self._evict_hashes(",".join(token_hashes))
        if self._tier is not None:
            await self._tier.delete(token_hashes)
        await self._coherence.changed("session", ",".join(token_hashes))

    def _evict_hashes(self, joined: str) -> None:
        for token_hash in joined.split(","):
            self._cache.put(token_hash, None)
            self._touched.pop(token_hash, None)

    async def end_for_user(self, user_id: int) -> int:
        ended = await self._repo.delete_for_user(user_id)
        await self.forget(ended)
        return len(ended)

    async def list(self, user_id: int | None = None) -> list[Session]:
        await self.flush()
        now = utcnow()
        return [s for s in await self._repo.list(user_id) if not s.expired(now, self.idle)]

    async def flush(self) -> None:
        touched, self._touched = self._touched, {}
        await self._repo.touch_many(touched)
        if self._tier is not None:
            # Other nodes judge idle expiry from the shared copy: keep its "last seen" current too.
            for token_hash in touched:
                hit, session = self._cache.get(token_hash)
                if hit and session is not None:
                    await self._tier.put(session, self.idle)

    async def purge_expired(self) -> int:
        now = utcnow()
        return await self._repo.purge_expired(now, now - self.idle)


def _settle(batch: list[tuple[Session, asyncio.Future[None]]], error: BaseException | None = None) -> None:
    """Wake the waiters of ``batch``; each gets ``error`` raised, or returns."""
    for _, done in batch:
        if done.done():  # its waiter was cancelled: no one is left to tell
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
