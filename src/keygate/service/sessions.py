"""Session tokens: issue, resolve, end.

The token is returned once and only its hash is stored (``domain.sessions.hash_token``). Resolving
a token is the hot path: it is answered from an in-process cache (see ``cache.TTLCache`` for the
invalidation rule), and the "last seen" time that drives idle expiry is written back in batches by
the flusher.

Issuing is the other hot path (every ``AuthenticateUser`` makes a session), so API-key sessions
are written behind: ``issue`` keeps the session here (answerable at once) and a writer task inserts
everything issued in the last ``WRITE_BEHIND_SECONDS`` in one transaction. Password and pending-2FA
sessions are rare and privileged, and are written before their token is returned. The trade-offs,
also in docs/performance.md:

- A crash loses the key sessions issued since the last write (at most ``WRITE_BEHIND_SECONDS``):
  their clients get "Not Authorized" and authenticate again with their key, as after any expiry.
- Another worker or node learns of a new session when it is written (or at once, with the Redis
  tier). So a token it does not know yet is looked up once more ``RECHECK_SECONDS`` later before
  being refused; only unknown tokens pay that delay.
- Sessions ended here before they are written (logout, a locked user, a key whose rights changed)
  are dropped, and deleted again after the write if it was already under way.
- A key changed elsewhere (another worker or node) while its new sessions waited here: after each
  write, every key in the batch is read back from the database, and the sessions issued before the
  key's last change are deleted. Any change of the key counts, so a label edit may cost a client
  that had just authenticated one more authentication; rights never outlive a change.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from datetime import datetime, timedelta

from keygate.domain.errors import NotAuthorized
from keygate.domain.permissions import Permission
from keygate.domain.sessions import ISSUED_SHAPE, MAX_TOKEN_LENGTH, Session, SessionKind, hash_token, new_token
from keygate.service.cache import TTLCache
from keygate.service.coherence import Coherence
from keygate.service.clock import utcnow
from keygate.store.redis_bus import RedisSessionTier
from keygate.store.repositories import SessionRepository

# Idle expiry is checked against the cached "last seen"; the database copy may lag by one flush.
TOUCH_RESOLUTION = timedelta(seconds=1)
WRITE_BEHIND_SECONDS = 0.1
RECHECK_SECONDS = 3 * WRITE_BEHIND_SECONDS
MAX_UNSAVED = 50_000  # beyond this (the database is failing) ``issue`` waits for a write itself
GIVE_UP_AFTER = 3  # failed writes of a batch before its rows are retried one by one and bad ones dropped

log = logging.getLogger("keygate.sessions")


class SessionManager:
    def __init__(self, repo: SessionRepository, idle: timedelta, absolute: timedelta, cache_ttl: float,
                 coherence: Coherence | None = None, tier: RedisSessionTier | None = None) -> None:
        self._repo = repo
        self._coherence = coherence or Coherence()
        self._tier = tier  # with Redis: sessions shared by every node, in front of the database
        self._coherence.on("session", self._evict_hashes, lambda: self._cache.clear())
        self.idle = idle
        self.absolute = absolute
        self._cache: TTLCache[str, Session] = TTLCache(cache_ttl, name="sessions")
        self._touched: dict[str, datetime] = {}
        self._unsaved: dict[str, Session] = {}  # issued here, not yet in the database
        self._in_flight: set[str] = set()  # being inserted right now
        self._killed: set[str] = set()  # ended before written: refuse, delete (again) and forget everywhere
        self._failures = 0
        self._write_lock = asyncio.Lock()
        self._read_key: Callable[[str], Awaitable[Any]] | None = None
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
        now = utcnow()
        token = new_token(now.timestamp())
        # created_at, last_seen_at, expires_at
        session = Session(hash_token(token), user_id, kind, permissions, api_key, client_ip, now, now, now + (lifetime or self.absolute))
        if kind is not SessionKind.KEY or self._read_key is None:
            await self._repo.insert(session)
        else:
            if len(self._unsaved) >= MAX_UNSAVED:
                await self._save_unsaved()
            self._unsaved[session.token_hash] = session
            self._start_writer()
        if self._tier is not None:
            await self._tier.put(session, self.idle)
        self._cache.put(session.token_hash, session)
        return token

    def fence_with(self, read_key: Callable[[str], Awaitable[Any]]) -> None:
        """How to read a key fresh from the store (an object with ``updated_at``, or ``None``).

        Key sessions are written behind only once this is set (see the module docstring).
        """
        self._read_key = read_key

    def _start_writer(self) -> None:
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._write_behind(), name="keygate-session-writer")

    async def _write_behind(self) -> None:
        while self._unsaved or self._killed:
            await asyncio.sleep(WRITE_BEHIND_SECONDS if self._failures == 0 else 1.0)
            try:
                await self._save_unsaved()
            except Exception:  # the rows stay unsaved; the next round (or flush) retries them
                log.exception("writing new sessions failed")

    async def _save_unsaved(self) -> None:
        """Write the unsaved sessions. The work runs in a task of its own, shielded: a caller cancelled
        meanwhile (the flusher, at shutdown) must not leave rows written yet still marked unsaved."""
        await asyncio.shield(asyncio.ensure_future(self._write_unsaved()))

    async def _write_unsaved(self) -> None:
        async with self._write_lock:
            batch = dict(self._unsaved)
            if batch:
                self._in_flight = set(batch)
                try:
                    await self._insert(list(batch.values()))
                finally:
                    self._in_flight = set()
                for token_hash in batch:
                    self._unsaved.pop(token_hash, None)
            killed = list(self._killed)
            for token_hash in killed:
                await self._repo.delete(token_hash)
            await self.forget(killed)
            self._killed.difference_update(killed)
            await self._fence(list(batch.values()))

    async def _fence(self, written: list[Session]) -> None:
        """Delete the just-written sessions whose key changed (anywhere) since they were issued.

        Read after the insert: a change committed before this read is seen here, and one committed
        after it found the rows in the database and ended them itself.
        """
        if self._read_key is None:
            return
        changed_at: dict[str, datetime | None] = {}
        for api_key in {s.api_key for s in written if s.api_key is not None}:
            key = await self._read_key(api_key)
            changed_at[api_key] = key.updated_at if key is not None else None
        stale = []
        for s in written:
            if s.api_key is None:
                continue
            stamp = changed_at[s.api_key]
            if stamp is None or stamp > s.created_at:
                stale.append(s.token_hash)
        for token_hash in stale:
            await self._repo.delete(token_hash)
        await self.forget(stale)

    async def _insert(self, batch: list[Session]) -> None:
        try:
            await self._repo.insert_many(batch)
            self._failures = 0
            return
        except Exception:
            self._failures += 1
            if self._failures < GIVE_UP_AFTER:
                raise
        # The batch keeps failing: write the rows one by one, so that one bad row (say, its user was
        # deleted meanwhile) does not hold the others back. A row that fails while others succeed is dropped.
        failed = []
        for session in batch:
            try:
                await self._repo.insert(session)
            except Exception:
                failed.append(session)
        if len(failed) == len(batch):
            raise RuntimeError(f"the database refused all {len(batch)} new sessions")
        self._failures = 0
        if failed:
            log.error("dropped %d new session(s) the database refused", len(failed))

    async def resolve(self, token: str, kind: SessionKind | None = None) -> Session:
        """Return the live session for ``token`` or raise ``NotAuthorized``; counts as activity."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthorized("Not Authorized: session token is missing or malformed")
        token_hash = hash_token(token)
        hit, session = self._cache.get(token_hash)
        if not hit:
            session = self._unsaved.get(token_hash) or await self._cache.load(token_hash, self._lookup)
            if session is None and self._tier is None and ISSUED_SHAPE.fullmatch(token):
                # Perhaps another worker issued it a moment ago and has not written it yet.
                await asyncio.sleep(RECHECK_SECONDS)
                self._cache.evict(token_hash)
                session = await self._cache.load(token_hash, self._lookup)
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
            if token_hash in self._unsaved:
                self._unsaved[token_hash] = session
        return session

    async def _lookup(self, token_hash: str) -> Session | None:
        if token_hash in self._killed:
            return None  # ended before it was written; its copies are being deleted
        session = await self._tier.get(token_hash) if self._tier is not None else None
        if session is None:
            session = await self._repo.get(token_hash)
            if session is not None and self._tier is not None:
                await self._tier.put(session, self.idle)
        return session

    async def end(self, token: str) -> bool:
        return await self.end_hash(hash_token(token))

    async def end_hash(self, token_hash: str) -> bool:
        self._cache.put(token_hash, None)
        self._touched.pop(token_hash, None)
        unsaved = self._drop_unsaved(lambda s: s.token_hash == token_hash)
        ended = await self._repo.delete(token_hash)
        await self.forget([token_hash])
        return ended or unsaved > 0

    def _drop_unsaved(self, predicate: Callable[[Session], bool]) -> int:
        """End sessions not yet written. The writer deletes them again (one may be in an insert under
        way) and removes them from the Redis tier and other nodes' caches."""
        doomed = [h for h, s in self._unsaved.items() if predicate(s)]
        for token_hash in doomed:
            del self._unsaved[token_hash]
            self._killed.add(token_hash)
        if doomed:
            self._start_writer()
        return len(doomed)

    def forget_key(self, api_key: str) -> None:
        """Called when the store ended a key's sessions (rights changed, secret rotated, key deleted):
        the ones not written yet end too."""
        self._drop_unsaved(lambda s: s.api_key == api_key)
        self._cache.evict_where(lambda s: s.api_key == api_key)

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
        unsaved = [h for h, s in self._unsaved.items() if s.user_id == user_id]
        self._drop_unsaved(lambda s: s.user_id == user_id)
        ended = await self._repo.delete_for_user(user_id)
        await self.forget(ended + unsaved)
        return len(ended) + len(unsaved)

    async def list(self, user_id: int | None = None) -> list[Session]:
        await self.flush()
        now = utcnow()
        return [s for s in await self._repo.list(user_id) if not s.expired(now, self.idle)]

    @property
    def unsaved_count(self) -> int:
        """Sessions issued here and not yet written (a queue depth in the metrics)."""
        return len(self._unsaved)

    async def flush(self) -> None:
        await self._save_unsaved()
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
