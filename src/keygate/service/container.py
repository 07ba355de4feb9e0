"""Wiring: build every service from ``Settings``, and the background flusher."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.exc import SQLAlchemyError

from keygate.config import Settings
from keygate.domain.devices import device_key
from keygate.domain.errors import ServiceUnavailable
from keygate.domain.passwords import dummy_hash
from keygate.domain.replay import parse_replay_mode
from keygate.domain.secretbox import SecretBox
from keygate.domain.throttle import ThrottlePolicy
from keygate.service.audit import FLUSH_SECONDS as AUDIT_FLUSH_SECONDS
from keygate.service.audit import AuditLog
from keygate.service.auth import Authenticator
from keygate.service.coherence import Coherence
from keygate.service.guard import AbuseGuard
from keygate.service.hash_gate import HashGate
from keygate.service.http_signatures import HttpSignatures
from keygate.service.keys import KeyManager, KeyPolicy
from keygate.service.principal import OPERATOR
from keygate.service.session_writer import SessionWriter
from keygate.service.sessions import SessionManager
from keygate.service.users import UserManager, generate_password
from keygate.store import changes
from keygate.store.changes import ChangeListener
from keygate.store.database import create_engine, migrate, require_current_schema
from keygate.store.master_key import decode_master_key, load_master_key, read_key_file, write_key_file
from keygate.store.repositories import AuditRepository, KeyRepository, SessionRepository, UserRepository
from keygate.store.shared_state import SharedState, SqlState
from keygate.store.unit import Units
from keygate.telemetry import sample_queue
from keygate.telemetry import sync as sync_metrics

if TYPE_CHECKING:
    from keygate.store.redis_bus import RedisSessionTier

# The Redis client is imported only where Redis is configured (the CLI on SQLite never loads it).

log = logging.getLogger("keygate")
FLUSH_SECONDS = 1.0
# Each step of a shutdown (stop the listener, write what is waiting, close Redis, close the pool) gets at
# most this long: a store that stopped answering, or a client library that waits on it without a bound,
# must not keep a stopping server (or a test's teardown) from ever finishing. What a step could not
# finish is logged by name.
CLOSE_STEP_SECONDS = 15.0
PURGE_EVERY = 300


@dataclass(frozen=True)
class Bootstrap:
    """What the first start created, to tell the operator once."""

    master_key_created: bool
    admin_username: str | None = None
    admin_password: str | None = None


def _env_previous_keys() -> list[bytes]:
    return [decode_master_key(v) for v in os.environ.get("KEYGATE_PREVIOUS_MASTER_KEYS", "").split(",") if v.strip()]


class Keygate:
    """The service layer as one object: ``users``, ``keys``, ``sessions``, ``auth``, ``audit``, ``guard``."""

    def __init__(self, settings: Settings, create_master_key: bool = True, serving: bool = True) -> None:
        """``serving``: a server process (follows the change log, writes key sessions behind); the CLI
        passes False: it answers one command and needs neither."""
        self.settings = settings
        master, previous, self._master_created = load_master_key(
            settings.master_key, settings.resolved_master_key_file, create=create_master_key
        )
        self.box = SecretBox(master, previous + _env_previous_keys(), loader=None if settings.master_key else self._read_keyring)
        self.engine = create_engine(settings.resolved_database_url, settings.database_connect_timeout_seconds,
                                    settings.database_statement_timeout_seconds)
        self.state: SharedState = SqlState(self.engine)
        tier: RedisSessionTier | None = None
        if settings.redis_url:
            url, namespace = settings.redis_url, settings.redis_namespace
            if serving:
                self.state, tier = _redis_state(url, namespace), _redis_tier(url, namespace)
            else:  # a CLI command: the Redis client is loaded (about 40 ms) only by a command that uses it
                self.state = cast(SharedState, _OnFirstUse(lambda: _redis_state(url, namespace)))
                tier = cast("RedisSessionTier", _OnFirstUse(lambda: _redis_tier(url, namespace)))
        self.coherence = Coherence()
        self.changes: ChangeListener | None = None
        if serving:
            self.changes = ChangeListener(self.engine, self.coherence.apply, self.coherence.reset)
        self._tier = tier
        audit_repo = AuditRepository(self.engine)
        self.units = Units(self.engine, audit_repo, self.coherence.apply)
        self.audit = AuditLog(audit_repo)
        ttl = settings.cache_ttl_seconds
        session_repo = SessionRepository(self.engine)
        self.session_writer = SessionWriter(session_repo) if serving else None
        self.sessions = SessionManager(
            session_repo,
            idle=timedelta(seconds=settings.session_idle_seconds),
            absolute=timedelta(seconds=settings.session_max_seconds),
            cache_ttl=ttl,
            coherence=self.coherence,
            tier=tier,
            writer=self.session_writer,
        )
        self.users = UserManager(UserRepository(self.engine), self.box, self.sessions, self.units, ttl, self.state, self.coherence)
        self.keys = KeyManager(
            KeyRepository(self.engine), self.box, self.users, self.sessions, self.units, ttl, self.state,
            KeyPolicy(
                default_replay_mode=parse_replay_mode(settings.default_replay_mode),
                require_allowlist_for_withdraw=settings.require_allowlist_for_withdraw,
                max_idle_days_without_allowlist=settings.key_max_idle_days_without_allowlist,
                require_v2_for_new_keys=settings.require_signature_v2_for_new_keys,
            ),
            self.coherence,
            unique_window_seconds=settings.unique_nonce_window_seconds,
        )
        self.guard = AbuseGuard(
            self.state,
            ThrottlePolicy.for_profile(
                settings.throttle_profile,
                ip_failures=settings.throttle_ip_failures,
                key_failures=settings.throttle_key_failures,
                user_failures=settings.throttle_user_failures,
                window_seconds=settings.throttle_window_seconds,
                max_backoff_seconds=settings.throttle_max_backoff_seconds,
                lockout_failures=settings.lockout_failures,
                lockout_seconds=settings.lockout_seconds,
            ),
            settings.unique_nonce_window_seconds,
            device_key(master),
            self.audit,
            HashGate(settings.password_hash_concurrency, settings.password_hash_queue),
            known_address_seconds=settings.known_address_days * 86400,
            window_size=settings.nonce_window_size,
        )
        self.auth = Authenticator(
            self.users, self.keys, self.sessions, self.audit, self.guard,
            pending_2fa_lifetime=timedelta(seconds=settings.pending_2fa_seconds),
            bind_session_ip=settings.bind_session_ip,
            key_max_idle_days=settings.key_max_idle_days_without_allowlist,
            coherence=self.coherence,
            units=self.units,
            refusal_seconds=settings.refusal_seconds,
        )
        self.http_signatures = HttpSignatures(self.auth, self.keys, settings.signature_window_seconds)
        self._flusher: asyncio.Task[None] | None = None
        self._audit_flusher: asyncio.Task[None] | None = None
        self._keyring_mtime = self._keyring_stamp()

    # ----- master key -------------------------------------------------------------------------
    def _read_keyring(self) -> tuple[bytes, list[bytes]]:
        current, previous = read_key_file(self.settings.resolved_master_key_file)
        return current, previous + _env_previous_keys()

    def _keyring_stamp(self) -> float | None:
        if self.settings.master_key:
            return None
        try:
            return self.settings.resolved_master_key_file.stat().st_mtime
        except OSError:
            return None

    def _reload_keyring_if_changed(self) -> None:
        stamp = self._keyring_stamp()
        if stamp is not None and stamp != self._keyring_mtime:
            self._keyring_mtime = stamp
            if self.box.reload():
                log.info("master key changed on disk; new secrets are sealed under the new key")

    async def rotate_master_key(self) -> int:
        """Make a new master key current (the old ones stay in the keyring) and re-seal every secret.

        Running servers notice the new keyring within a second (the flusher checks its mtime) and
        open values sealed under an unknown key by re-reading it, so they keep serving throughout.
        Returns how many sealed values were rewritten.
        """
        if self.settings.master_key:
            return await self._reseal_under_env_key()
        path = self.settings.resolved_master_key_file
        current, previous = read_key_file(path)
        old_box = SecretBox(current, previous + _env_previous_keys())
        new_key = os.urandom(32)
        write_key_file(path, new_key, [current, *previous])
        self.box.reload()
        new_box = SecretBox(new_key, [current, *previous] + _env_previous_keys())
        count = 0
        # Two passes: the second catches secrets that a server created under the old key while the
        # first pass ran, before it noticed the new keyring.
        for delay in (0.0, 2.5 * FLUSH_SECONDS):
            await asyncio.sleep(delay)
            count += await self.keys.reseal_all(new_box, old_box) + await self.users.reseal_all(new_box, old_box)
        self.audit.record("master_key.rotate", detail=f"resealed={count}")
        await self.audit.flush()  # (the flusher is not running in the CLI)
        return count

    async def _reseal_under_env_key(self) -> int:
        """With ``KEYGATE_MASTER_KEY``, the operator chooses the new key: set it there, list the old one in
        ``KEYGATE_PREVIOUS_MASTER_KEYS``, restart, and this re-seals every value still under an old key."""
        if not _env_previous_keys():
            raise RuntimeError(
                "the master key comes from KEYGATE_MASTER_KEY: set it to a new key, list the old one in "
                "KEYGATE_PREVIOUS_MASTER_KEYS, restart the servers, then run this command to re-seal"
            )
        count = await self.keys.reseal_all(self.box, self.box) + await self.users.reseal_all(self.box, self.box)
        self.audit.record("master_key.rotate", detail=f"resealed={count}; key from environment")
        await self.audit.flush()
        return count

    # ----- lifecycle --------------------------------------------------------------------------
    async def start(self, migrate_schema: bool = True, bootstrap_admin: bool = True) -> Bootstrap:
        """Bring the schema to the newest revision (``migrate_schema``; else only check, with one query,
        that it is there: ``SchemaNotCurrent`` if not), and create the first admin if there is no user."""
        if migrate_schema:
            await migrate(self.engine)
        else:
            await require_current_schema(self.engine)
        boot = Bootstrap(master_key_created=self._master_created)
        if bootstrap_admin and await self.users.count() == 0:
            password = generate_password()
            await self.users.create(OPERATOR, "admin", password, is_admin=True)
            boot = Bootstrap(self._master_created, "admin", password)
        await self.flush()
        return boot

    async def start_background(self) -> None:
        """Follow the change log and start the flushers (a server process calls this once)."""
        # The dummy password hash (an unknown username's sign-in is checked against it) is made now,
        # before the first request: made on first use, that sign-in would take the hash's time twice.
        await asyncio.to_thread(dummy_hash)
        sync_metrics()  # makes the Prometheus series now (a CLI, which never syncs, never loads prometheus-client)
        if self.changes is not None and self._flusher is None:
            await self.changes.start()
            self.coherence.attach(self.changes)  # from now on, a listener that falls behind fails closed
            if self.settings.redis_url:
                from keygate.store.redis_state import RedisState

                if isinstance(self.state, RedisState):
                    await self.state.start_watch()
                    self.coherence.attach(self.state)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="keygate-flusher")
            self._audit_flusher = asyncio.create_task(self._audit_loop(), name="keygate-audit-flusher")

    async def _audit_loop(self) -> None:
        """Authentication events reach the database within ``AUDIT_FLUSH_SECONDS`` (the most a crash loses)."""
        while True:
            await asyncio.sleep(AUDIT_FLUSH_SECONDS)
            if self.audit.pending:
                try:
                    await self.audit.flush()
                except (ServiceUnavailable, OSError, SQLAlchemyError) as exc:  # kept for the next round
                    log.warning("writing audit events failed (%s); retrying", type(exc).__name__)
                except Exception:
                    log.exception("writing audit events failed")

    async def _flush_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            ticks += 1
            try:
                self._reload_keyring_if_changed()
                self.sample_metrics()
                await self.flush()
                if ticks % PURGE_EVERY == 0:
                    await self.sessions.purge_expired()
                    await self.state.purge()
                    await changes.purge(self.engine)
                    await self.keys.purge_usage()
            except (ServiceUnavailable, OSError, SQLAlchemyError) as exc:  # an outage: the next tick retries
                log.warning("background flush failed (%s); retrying", type(exc).__name__)
            except Exception:  # keep flushing; the next tick retries what failed
                log.exception("background flush failed")

    def sample_metrics(self) -> None:
        """For the metrics, once a second: the batched writers' backlog just before they flush, and the local counts."""
        sample_queue("audit", self.audit.pending)
        sample_queue("session_writes", self.sessions.pending_writes)
        sample_queue("key_last_used", self.keys.pending_uses)
        sync_metrics()  # this process's local counts into the shared series (see keygate.telemetry)

    def _writers(self) -> tuple[tuple[str, Callable[[], Awaitable[None]], Callable[[], int]], ...]:
        """What waits to be written, in the order it is written: (what, its flush, how many wait)."""
        return (("new key sessions", self.sessions.flush, lambda: self.sessions.pending_writes),
                ("keys' last uses", self.keys.flush, lambda: self.keys.pending_uses),
                ("audit events", self.audit.flush, lambda: self.audit.pending))

    async def flush(self) -> None:
        for _, flush, _ in self._writers():
            await flush()

    async def _last_flush(self) -> None:
        """``flush`` at shutdown: each writer in turn, whatever became of the one before (a session row
        the database refuses must not keep the audit events from being written), and what cannot be
        written is counted in the log, since nothing will retry it."""
        for what, flush, pending in self._writers():
            try:
                await flush()
            except Exception as exc:
                log.error("shutdown: %d %s could not be written (%s); they are lost", pending(), what,
                          type(exc).__name__)

    async def close(self) -> None:
        for task in (self._flusher, self._audit_flusher):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        self._flusher = self._audit_flusher = None
        if self.changes is not None:
            await _bounded("stopping the change listener", self.changes.close())
        await _bounded("writing pending sessions, key uses and audit events", self._last_flush())
        await _bounded("closing the shared state", self.state.close())
        if self._tier is not None:
            await _bounded("closing the session tier", self._tier.close())
        await _bounded("closing the database pool", self.engine.dispose())


def _redis_state(url: str, namespace: str) -> SharedState:
    from keygate.store.redis_state import RedisState

    return RedisState(url, namespace)


def _redis_tier(url: str, namespace: str) -> RedisSessionTier:
    from keygate.store.redis_bus import RedisSessionTier

    return RedisSessionTier(url, namespace)


class _OnFirstUse:
    """Stands for an object made by ``make()`` the first time one of its attributes is asked for;
    ``close()`` closes it only if it was made."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            self._made = self._make()
        return getattr(self._made, name)

    async def close(self) -> None:
        if self._made is not None:
            await self._made.close()


async def _bounded(step: str, work: Awaitable[None]) -> None:
    """Run one shutdown step for at most ``CLOSE_STEP_SECONDS``; past that, log it and go on."""
    try:
        await asyncio.wait_for(work, CLOSE_STEP_SECONDS)
    except TimeoutError:
        log.warning("shutdown: %s did not finish within %g s; stopping without it", step, CLOSE_STEP_SECONDS)
