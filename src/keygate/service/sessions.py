"""Session tokens: issue, resolve, end.

The token is returned once and only its hash is stored (``domain.sessions.hash_token``). Resolving
a token is the hot path: it is answered from an in-process cache (``cache.TTLCache``). Its
invalidation rule: a session ended anywhere (logout, an administrator's "end session", a TOTP
change) is a ``session`` change in the change log, which every process applies within the bound of
``store.changes``; sessions ended in bulk (password reset, lock, sign-out everywhere) are refused
through their user's ``sessions_valid_after`` instead (see ``Authenticator.principal_for_token``).
The "last seen" time that drives idle expiry is written back in batches by the flusher.

New key sessions are written behind by a ``SessionWriter`` when the container wires one (the server
does; the CLI does not); password and pending-2FA sessions are rare and privileged and are written
before their token is returned.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from keygate.domain.errors import NotAuthorized
from keygate.domain.paging import DEFAULT_PAGE_SIZE, Page, Search, check_paging, parse_search
from keygate.domain.permissions import ALL_PERMISSIONS
from keygate.domain.sessions import ISSUED_SHAPE, MAX_TOKEN_LENGTH, Session, SessionKind, hash_token, new_token
from keygate.service.cache import TTLCache
from keygate.service.clock import utcnow
from keygate.service.coherence import Coherence
from keygate.service.principal import Principal
from keygate.service.session_writer import RECHECK_SECONDS, SessionWriter
from keygate.store.repositories import SessionRepository
from keygate.store.unit import Unit

if TYPE_CHECKING:  # the Redis client is loaded only where Redis is configured (service.container)
    from keygate.store.redis_bus import RedisSessionTier

# Idle expiry is checked against the cached "last seen"; the database copy may lag by one flush.
TOUCH_RESOLUTION = timedelta(seconds=1)
_GONE = "Not Authorized: session expired or unknown; authenticate again"


class SessionManager:
    def __init__(self, repo: SessionRepository, idle: timedelta, absolute: timedelta, cache_ttl: float,
                 coherence: Coherence | None = None, tier: RedisSessionTier | None = None,
                 writer: SessionWriter | None = None) -> None:
        self._repo = repo
        self._tier = tier  # with Redis: sessions shared by every node, in front of the database
        self._writer = writer
        self.idle = idle
        self.absolute = absolute
        self._cache: TTLCache[str, Session] = TTLCache(cache_ttl, name="sessions")
        self._touched: dict[str, datetime] = {}
        (coherence or Coherence()).on("session", self._forget_here, self._cache.clear)

    @property
    def pending_writes(self) -> int:
        return self._writer.pending if self._writer is not None else 0

    async def issue(self, user_id: int, kind: SessionKind, api_key: str | None, client_ip: str | None,
                    lifetime: timedelta | None = None, key_serial: int | None = None) -> str:
        now = utcnow()
        token = new_token(now.timestamp())
        rights = ALL_PERMISSIONS if kind is SessionKind.PASSWORD else frozenset()  # a key session's are its key's, live
        session = Session(hash_token(token), user_id, kind, rights, api_key, client_ip, now, now,
                          now + (lifetime or self.absolute), key_serial)
        if kind is SessionKind.KEY and self._writer is not None:
            await self._writer.add(session)
        else:
            await self._repo.insert(session)
        if self._tier is not None:
            await self._tier.put(session, self.idle)
        self._cache.put(session.token_hash, session)
        return token

    async def resolve(self, token: str, kind: SessionKind | None = None) -> Session:
        """Return the live session for ``token`` or raise ``NotAuthorized``; counts as activity."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthorized("Not Authorized: session token is missing or malformed")
        token_hash = hash_token(token)
        hit, session = self._cache.get(token_hash)
        if not hit:
            session = (self._writer.get(token_hash) if self._writer else None) or await self._cache.load(token_hash, self._lookup)
            if session is None and self._tier is None and ISSUED_SHAPE.fullmatch(token):
                # Perhaps another worker issued it a moment ago and has not written it yet.
                await asyncio.sleep(RECHECK_SECONDS)
                self._cache.evict(token_hash)
                session = await self._cache.load(token_hash, self._lookup)
        now = utcnow()
        if session is None or not hmac.compare_digest(session.token_hash, token_hash):
            raise NotAuthorized(_GONE)
        if session.expired(now, self.idle):
            await self.end_quietly(token_hash)
            raise NotAuthorized(_GONE)
        if kind is not None and session.kind is not kind:
            raise NotAuthorized(_GONE)
        if now - session.last_seen_at >= TOUCH_RESOLUTION:
            session = session.touched(now)
            self._cache.put(token_hash, session)
            self._touched[token_hash] = now
            if self._writer is not None:
                self._writer.touched(session)
        return session

    async def _lookup(self, token_hash: str) -> Session | None:
        session = await self._tier.get(token_hash) if self._tier is not None else None
        if session is None:
            session = await self._repo.get(token_hash)
            if session is not None and self._tier is not None:
                await self._tier.put(session, self.idle)
        return session

    # ----- ending sessions ----------------------------------------------------------------------
    def _forget_here(self, token_hash: str) -> None:
        """A session ended (here or elsewhere): drop it from this process's cache and writer."""
        self._cache.put(token_hash, None)
        self._touched.pop(token_hash, None)
        if self._writer is not None and self._writer.get(token_hash) is not None:
            self._writer.kill(token_hash)

    async def end(self, unit: Unit, token_hash: str) -> bool:
        """End one session inside ``unit``: deleted with the unit, refused everywhere once it commits."""
        unsaved = self._writer.kill(token_hash) if self._writer is not None else False
        ended = await self._repo.delete(token_hash, unit.conn)
        unit.changed("session", token_hash)
        if self._tier is not None:
            await self._tier.delete([token_hash])
        return ended or unsaved

    async def end_quietly(self, token_hash: str) -> None:
        """Drop an expired session (nothing changes for anyone: it is refused everywhere already)."""
        self._forget_here(token_hash)
        await self._repo.delete(token_hash)
        if self._tier is not None:
            await self._tier.delete([token_hash])

    async def end_some_of_user(self, unit: Unit, user_id: int, kinds: tuple[SessionKind, ...], keep: str | None) -> int:
        """End the user's sessions of ``kinds`` except ``keep`` (written ones: these kinds are never written behind)."""
        ended = await self._repo.delete_for_user(user_id, unit.conn, kinds=kinds, keep=keep)
        for token_hash in ended:
            unit.changed("session", token_hash)
        if self._tier is not None:
            await self._tier.delete(ended)
        return len(ended)

    async def delete_all_of_user(self, unit: Unit, user_id: int) -> int:
        """Delete the rows of every session of the user (they are refused by the user's
        ``sessions_valid_after`` anyway; this keeps listings and the Redis tier clean)."""
        ended = await self._repo.delete_for_user(user_id, unit.conn)
        if self._tier is not None:
            await self._tier.delete(ended)
        return len(ended)

    # ----- listing and upkeep -------------------------------------------------------------------
    async def page(self, actor: Principal, search: str = "", page: int = 1, size: int = DEFAULT_PAGE_SIZE,
                   user_id: int | None = None) -> Page[Session]:
        """A page of live sessions (pending two-factor sign-ins excluded), administrators only: by
        owner and age (the newest first); ``search`` is a user id (a number) or a username prefix (by name, then age)."""
        actor.require_admin()
        page, size = check_paging(page, size)
        wanted = Search(user_id=user_id) if user_id is not None else parse_search(search)
        await self.flush()
        now = utcnow()
        found = await self._repo.page(wanted, now, now - self.idle, (page - 1) * size, size + 1)
        return Page(found[:size], page, size, len(found) > size)

    async def get(self, token_hash: str) -> Session | None:
        return await self._repo.get(token_hash)

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer.flush()
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
