"""Wiring: build every service from ``Settings``, and the background flusher."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta

from keygate.config import Settings
from keygate.domain.secretbox import SecretBox
from keygate.service.audit import AuditLog
from keygate.service.auth import Authenticator
from keygate.service.keys import KeyManager
from keygate.service.sessions import SessionManager
from keygate.service.users import UserManager, generate_password
from keygate.store.database import create_engine, migrate
from keygate.store.master_key import decode_master_key, load_master_key
from keygate.store.repositories import AuditRepository, KeyRepository, SessionRepository, UserRepository

log = logging.getLogger("keygate")
FLUSH_SECONDS = 1.0
PURGE_EVERY = 300


@dataclass(frozen=True)
class Bootstrap:
    """What the first start created, to tell the operator once."""

    master_key_created: bool
    admin_username: str | None = None
    admin_password: str | None = None


class Keygate:
    """The service layer as one object: ``users``, ``keys``, ``sessions``, ``auth``, ``audit``."""

    def __init__(self, settings: Settings, create_master_key: bool = True) -> None:
        self.settings = settings
        master, self._master_created = load_master_key(
            settings.master_key, settings.resolved_master_key_file, create=create_master_key
        )
        previous = [decode_master_key(v) for v in os.environ.get("KEYGATE_PREVIOUS_MASTER_KEYS", "").split(",") if v.strip()]
        self.box = SecretBox(master, previous)
        self.engine = create_engine(settings.resolved_database_url)
        self.audit = AuditLog(AuditRepository(self.engine))
        ttl = settings.cache_ttl_seconds
        self.sessions = SessionManager(
            SessionRepository(self.engine),
            idle=timedelta(seconds=settings.session_idle_seconds),
            absolute=timedelta(seconds=settings.session_max_seconds),
            cache_ttl=ttl,
        )
        self.users = UserManager(UserRepository(self.engine), self.box, self.sessions, self.audit, ttl)
        self.keys = KeyManager(KeyRepository(self.engine), self.box, self.users, self.sessions, self.audit, ttl)
        self.auth = Authenticator(
            self.users, self.keys, self.sessions, self.audit,
            pending_2fa_lifetime=timedelta(seconds=settings.pending_2fa_seconds),
            bind_session_ip=settings.bind_session_ip,
        )
        self._flusher: asyncio.Task[None] | None = None

    async def start(self, migrate_schema: bool = True, bootstrap_admin: bool = True) -> Bootstrap:
        if migrate_schema:
            await migrate(self.engine)
        boot = Bootstrap(master_key_created=self._master_created)
        if bootstrap_admin and await self.users.count() == 0:
            password = generate_password()
            await self.users.create("admin", password, is_admin=True)
            boot = Bootstrap(self._master_created, "admin", password)
        await self.flush()
        return boot

    def start_background(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="keygate-flusher")

    async def _flush_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            ticks += 1
            try:
                await self.flush()
                if ticks % PURGE_EVERY == 0:
                    await self.sessions.purge_expired()
            except Exception:  # keep flushing; the next tick retries what failed
                log.exception("background flush failed")

    async def flush(self) -> None:
        await self.sessions.flush()
        await self.keys.flush()
        await self.audit.flush()

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        with suppress(Exception):
            await self.flush()
        await self.engine.dispose()
