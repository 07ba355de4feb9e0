"""Shared fixtures: real SQLite and PostgreSQL databases, the service, and a real server process.

Service-backed fixtures are parametrized over both databases, so every test that uses them runs
against SQLite and PostgreSQL. Where PostgreSQL, Redis or Chromium is missing, those tests skip with a
reason, except under CI (``CI=true``), where a missing service is a failure.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import operator_acting_as

PG_ADMIN_DSN = os.environ.get("KEYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEYGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() == "true"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def need(available: bool, what: str) -> None:
    """Skip when ``what`` is missing on a developer's machine; fail under CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available on this machine")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pg_available() -> bool:
    return _port_open("127.0.0.1", 5432)


def redis_available() -> bool:
    return _port_open("127.0.0.1", 6379)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _psql(sql: str, dbname: str = "test") -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


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
        redis_namespace=f"kgtest{secrets.token_hex(4)}",  # Redis outlives the database: never share counters
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a server process use ``settings``."""
    return {
        "KEYGATE_DATA_DIR": str(settings.data_dir),
        "KEYGATE_DATABASE_URL": settings.resolved_database_url,
        "KEYGATE_MASTER_KEY": settings.master_key or "",
        "KEYGATE_DEFAULT_REPLAY_MODE": settings.default_replay_mode,
        "KEYGATE_THROTTLE_IP_FAILURES": str(settings.throttle_ip_failures),
        "KEYGATE_THROTTLE_KEY_FAILURES": str(settings.throttle_key_failures),
        "KEYGATE_THROTTLE_USER_FAILURES": str(settings.throttle_user_failures),
        "KEYGATE_LOCKOUT_FAILURES": str(settings.lockout_failures),
        "KEYGATE_LOCKOUT_SECONDS": str(settings.lockout_seconds),
        "KEYGATE_REDIS_URL": settings.redis_url or "",
        "KEYGATE_REDIS_NAMESPACE": settings.redis_namespace,
    }


@pytest.fixture(scope="session")
async def kg(settings: Settings) -> AsyncIterator[Keygate]:
    """The service layer on the session's database (migrated, no bootstrap admin)."""
    service = Keygate(settings)
    await service.start(bootstrap_admin=False)
    yield service
    await service.close()


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


@dataclass
class NewUser:
    user_id: int
    username: str
    password: str


@pytest.fixture
def make_user(kg: Keygate):  # type: ignore[no-untyped-def]
    async def make(admin: bool = False, email: str = "") -> NewUser:
        password = secrets.token_urlsafe(16)
        user = await kg.users.create(unique_name("admin" if admin else "user"), password, email, is_admin=admin)
        return NewUser(user.user_id, user.username, password)

    return make


@pytest.fixture
def make_key(kg: Keygate):  # type: ignore[no-untyped-def]
    async def make(user_id: int, permissions: list[str] | None = None, ips: list[str] | None = None, label: str = "") -> CreatedKey:
        owner = await kg.users.require(user_id)
        return await kg.keys.create(operator_acting_as(owner), user_id, parse_permissions(permissions or []), IpAllowlist.parse(ips or []), label)

    return make


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[str]
    env: dict[str, str]
    output: Path

    def log(self) -> str:
        return self.output.read_text()


def start_server(settings: Settings, extra_env: dict[str, str] | None = None) -> Server:
    """Run ``python -m keygate serve`` as a real process on a free port and wait until it answers."""
    port = free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "KEYGATE_PORT": str(port),
        "KEYGATE_HOST": "127.0.0.1",
        "KEYGATE_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    output = Path(settings.data_dir) / f"server-{port}.log"
    out = output.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "keygate", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"keygate server exited early:\n{output.read_text()}")
        try:
            if httpx.get(f"{base_url}/AP/Ping", timeout=1).status_code == 200:
                return Server(base_url, proc, env, output)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"keygate server did not start:\n{output.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(settings: Settings, kg: Keygate) -> Iterator[Server]:
    """A real keygate server process sharing the session's database and master key."""
    srv = start_server(settings)
    yield srv
    stop_server(srv)


def bootstrap_password(log: str) -> str | None:
    m = re.search(r"password: (\S+)", log)
    return m.group(1) if m else None


# ----- abuse-resistance fixtures (tests/security) ------------------------------------------


@pytest.fixture(params=["database", "redis"])
def shared_state(request: pytest.FixtureRequest) -> str | None:
    """Where nonce claims and failure counters live: the database, or Redis."""
    if request.param == "redis":
        need(redis_available(), "Redis at 127.0.0.1:6379")
        return REDIS_URL
    return None


StrictFactory = Callable[..., Awaitable[Keygate]]


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
        kg = Keygate(dataclasses.replace(settings, **values))  # type: ignore[arg-type]
        await kg.start(bootstrap_admin=False)
        kg.start_background()
        if kg.bus is not None:
            assert await kg.bus.wait_connected(), "the Redis invalidation channel did not connect"
        made.append(kg)
        return kg

    yield make
    for kg in made:
        await kg.close()
