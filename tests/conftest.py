"""Shared fixtures: real SQLite and PostgreSQL databases, the service, and a real server process.

Service-backed fixtures are parametrized over both databases, so every test that uses them runs
against SQLite and PostgreSQL. Where PostgreSQL, Redis or Chromium is missing, those tests skip with a
reason, except under CI (``CI=true``), where a missing service is a failure.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings as hypothesis_settings

from keygate.config import Settings
from support import (  # noqa: F401  (re-exported for modules that import them from conftest)
    ARTIFACTS,
    CHROMIUM,
    IN_CI,
    PG_ADMIN_DSN,
    REDIS_URL,
    NewUser,
    Server,
    StrictFactory,
    _port_open,
    _psql,
    bootstrap_password,
    free_port,
    need,
    pg_available,
    redis_available,
    settings_env,
    start_server,
    stop_server,
    unique_name,
)

pytest_plugins = ["hang_report"]  # a hang reports where each asyncio task waits

# Property tests judge behaviour, not speed: a loaded CI machine must not fail one by its clock.
hypothesis_settings.register_profile("keygate", deadline=None)
hypothesis_settings.load_profile("keygate")
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database for this test session: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'keygate.db'}"
        return
    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"keygate_test_{uuid.uuid4().hex[:12]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def master_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="session")
def settings(database_url: str, master_key: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the shared test database.

    Keys default to the APEX-compatible replay mode and throttling thresholds are out of reach, so that
    tests which reuse a nonce or fail on purpose do not disturb one another; the security tests build
    their own service with strict settings.
    """
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=database_url,
        master_key=master_key,
        default_replay_mode="compatible",
        throttle_ip_failures=1_000_000,
        throttle_key_failures=1_000_000,
        throttle_user_failures=1_000_000,
        lockout_failures=100,
        refusal_seconds=0.0,  # in-process tests fail on purpose a lot; the servers they start keep the default
        redis_namespace=f"kgtest{secrets.token_hex(4)}",  # Redis outlives the database: never share counters
    )


@pytest.fixture(scope="session")
async def kg(settings: Settings) -> AsyncIterator[Keygate]:
    """The service layer on the session's database (migrated, no bootstrap admin)."""
    service = Keygate(settings)
    await service.start(bootstrap_admin=False)
    _LIVE_SERVICES.append(service)
    yield service
    _LIVE_SERVICES.remove(service)
    await service.close()


# Key sessions issued in this process are written behind, by a task that holds an SQLite write
# transaction across an await. A test that then blocks the event loop (a subprocess, a synchronous
# HTTP call to the server) would hold that lock for as long, and the server or CLI it waits for
# would time out on "database is locked". So every test ends with those writes settled.
_LIVE_SERVICES: list[Keygate] = []


@pytest.fixture(autouse=True)
async def _settle_background_writes() -> AsyncIterator[None]:
    yield
    for service in list(_LIVE_SERVICES):
        await service.sessions.flush()


@pytest.fixture
def make_user(kg: Keygate):  # type: ignore[no-untyped-def]
    async def make(admin: bool = False, email: str = "") -> NewUser:
        password = secrets.token_urlsafe(16)
        user = await kg.users.create(OPERATOR, unique_name("admin" if admin else "user"), password, email, is_admin=admin)
        return NewUser(user.user_id, user.username, password)

    return make


@pytest.fixture
def make_key(kg: Keygate):  # type: ignore[no-untyped-def]
    async def make(user_id: int, permissions: list[str] | None = None, ips: list[str] | None = None, label: str = "") -> CreatedKey:
        await kg.users.require(user_id)
        return await kg.keys.create(OPERATOR, user_id, parse_permissions(permissions or []), IpAllowlist.parse(ips or []), label)

    return make


@pytest.fixture(scope="session")
def server(settings: Settings, kg: Keygate) -> Iterator[Server]:
    """A real keygate server process sharing the session's database and master key."""
    srv = start_server(settings)
    yield srv
    stop_server(srv)


@pytest.fixture(params=["database", "redis"])
def shared_state(request: pytest.FixtureRequest) -> str | None:
    """Where nonce claims and failure counters live: the database, or Redis."""
    if request.param == "redis":
        need(redis_available(), "Redis at 127.0.0.1:6379")
        return REDIS_URL
    return None


@pytest.fixture
async def strict_kg(settings: Settings, shared_state: str | None) -> AsyncIterator[StrictFactory]:
    """Build services on the session database with strict abuse settings (overridable per test)."""
    made: list[Keygate] = []

    async def make(**overrides: object) -> Keygate:
        values: dict[str, object] = dict(
            redis_url=shared_state,
            default_replay_mode="increasing",
            throttle_ip_failures=3,
            throttle_key_failures=3,
            throttle_user_failures=3,
            throttle_window_seconds=60,
            lockout_failures=6,
            lockout_seconds=3600,
        )
        values.update(overrides)
        kg = Keygate(settings.model_copy(update=values))
        await kg.start(bootstrap_admin=False)
        await kg.start_background()
        made.append(kg)
        return kg

    yield make
    for kg in made:
        await kg.close()
