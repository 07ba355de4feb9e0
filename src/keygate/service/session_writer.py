"""Write-behind of new key sessions.

Every ``AuthenticateUser`` with an API key makes a session, so writing each one before answering
would put a database write on the sign-in path. The writer keeps a new key session here (answerable
at once by this process) and a task inserts everything issued in the last ``WRITE_BEHIND_SECONDS``
in one transaction. The trade-offs (docs/performance.md):

- A crash loses the key sessions issued since the last write (at most ``WRITE_BEHIND_SECONDS``):
  their clients get "Not Authorized" and authenticate again with their key, as after any expiry.
- Another process learns of a new session when it is written (or at once, with the Redis tier), so
  ``SessionManager.resolve`` looks a token it does not know up once more ``RECHECK_SECONDS`` later.
- Nothing a session may do depends on its being written: its rights are its key's rights at each
  use, and a key deleted or rotated, or a user locked, reset or signed out everywhere, refuses it on
  every process whether it was written or not (see ``Authenticator.principal_for_token``).
- A session ended here before it was written (logout) is dropped, and deleted again after the write
  if the write was already under way.
"""

from __future__ import annotations

import asyncio
import logging

from keygate.domain.errors import ServiceUnavailable
from keygate.domain.sessions import Session
from keygate.store.repositories import SessionRepository

WRITE_BEHIND_SECONDS = 0.1
RECHECK_SECONDS = 3 * WRITE_BEHIND_SECONDS
MAX_UNSAVED = 50_000  # beyond this (the database is failing) ``add`` waits for a write itself
GIVE_UP_AFTER = 3  # failed writes of a batch before its rows are retried one by one and bad ones dropped

log = logging.getLogger("keygate.sessions")


class SessionWriter:
    def __init__(self, repo: SessionRepository) -> None:
        self._repo = repo
        self._unsaved: dict[str, Session] = {}  # issued here, not yet in the database
        self._killed: set[str] = set()  # ended before written: delete (again) after the write
        self._failures = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._unsaved)

    def get(self, token_hash: str) -> Session | None:
        return self._unsaved.get(token_hash)

    async def add(self, session: Session) -> None:
        if len(self._unsaved) >= MAX_UNSAVED:
            await self.flush()
        self._unsaved[session.token_hash] = session
        self._start()

    def touched(self, session: Session) -> None:
        """Keep the newest "last seen" of a session that is still waiting to be written."""
        if session.token_hash in self._unsaved:
            self._unsaved[session.token_hash] = session

    def kill(self, token_hash: str) -> bool:
        """Drop a session not yet written; the next write deletes it too, in case it was under way."""
        dropped = self._unsaved.pop(token_hash, None) is not None
        self._killed.add(token_hash)
        self._start()
        return dropped

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="keygate-session-writer")

    async def _run(self) -> None:
        while self._unsaved or self._killed:
            await asyncio.sleep(WRITE_BEHIND_SECONDS if self._failures == 0 else 1.0)
            try:
                await self.flush()
            except ServiceUnavailable:  # an outage, logged once where it is seen (store/outage.py); retried
                pass
            except Exception:  # the rows stay unsaved; the next round (or flush) retries them
                log.exception("writing new sessions failed")

    async def flush(self) -> None:
        """Write what is waiting. Shielded: a caller cancelled meanwhile (the flusher, at shutdown)
        must not leave rows that were written still marked unsaved."""
        await asyncio.shield(asyncio.ensure_future(self._write()))

    async def _write(self) -> None:
        async with self._lock:
            batch = dict(self._unsaved)
            if batch:
                await self._insert(list(batch.values()))
                for token_hash in batch:
                    self._unsaved.pop(token_hash, None)
            killed = list(self._killed)
            for token_hash in killed:
                await self._repo.delete(token_hash)
            self._killed.difference_update(killed)

    async def _insert(self, batch: list[Session]) -> None:
        try:
            await self._repo.insert_many(batch)
            self._failures = 0
            return
        except ServiceUnavailable:
            raise  # an outage, not a bad row: the whole batch waits for the database to return
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
            except ServiceUnavailable:
                raise
            except Exception:
                failed.append(session)
        if len(failed) == len(batch):
            raise RuntimeError(f"the database refused all {len(batch)} new sessions")
        self._failures = 0
        if failed:
            log.error("dropped %d new session(s) the database refused", len(failed))
