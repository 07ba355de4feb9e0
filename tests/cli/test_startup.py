"""An everyday command starts light (issue 12): it applies no migration, hashes no password, and loads
neither the server (FastAPI, uvicorn, the console) nor Alembic, the SDK's HTTP client or Redis.

Only ``keygate init``, ``serve`` and ``migrate`` apply migrations. Every other command reads the
schema's revision with one query; on a database that is behind (or empty) it stops with one line
saying how to fix it, and leaves the database as it was.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import clean_env, create_pg_database, keygate, need, pg_available, settings_env

from keygate.config import Settings
from keygate.service import Keygate
from keygate.store.database import HEAD_REVISION, REVISIONS, _alembic_config, create_engine, schema_revision
from support import REDIS_URL, redis_available

BEHIND = REVISIONS[-2]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A new, empty database (its URL) and the environment of a CLI that uses it."""
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'var' / 'keygate.db'}"
        yield url, clean_env(KEYGATE_DATA_DIR=str(tmp_path / "var"), KEYGATE_DATABASE_URL=url, KEYGATE_MASTER_KEY=master_key)
        return
    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"keygate_cli_{uuid.uuid4().hex[:12]}"
    create_pg_database(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        yield url, clean_env(KEYGATE_DATA_DIR=str(tmp_path / "var"), KEYGATE_DATABASE_URL=url, KEYGATE_MASTER_KEY=master_key)
    finally:
        create_pg_database(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _migrate_to(url: str, revision: str) -> None:
    from alembic import command

    async def run() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), revision))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _revision(url: str) -> tuple[str, ...]:
    async def run() -> tuple[str, ...]:
        engine = create_engine(url)
        try:
            return await schema_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _only_line(result: subprocess.CompletedProcess[str]) -> str:
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output, output
    assert len(output.splitlines()) == 1, output
    return output


def test_a_command_on_a_database_behind_says_so_in_one_line_and_migrates_nothing(empty: tuple[str, dict[str, str]]) -> None:
    url, env = empty
    _migrate_to(url, BEHIND)
    for command in (("user", "list"), ("key", "list", "--user", "1"), ("audit",)):
        refused = keygate(*command, env=env)
        assert refused.returncode == 2
        assert _only_line(refused) == (f"error: the database schema is at revision {BEHIND}, this keygate needs "
                                       f"{HEAD_REVISION}: run `keygate migrate` (keygate serve and keygate init migrate too)")
    assert _revision(url) == (BEHIND,), "a command other than init, serve and migrate applied a migration"

    migrated = keygate("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert _only_line(migrated) == f"the database schema is now at revision {HEAD_REVISION} (was {BEHIND})"
    assert _revision(url) == (HEAD_REVISION,)
    assert keygate("user", "list", env=env).returncode == 0
    again = keygate("migrate", env=env)
    assert again.returncode == 0 and _only_line(again) == f"the database schema is already at revision {HEAD_REVISION}"


def test_a_command_on_an_empty_database_points_at_init_and_creates_nothing(empty: tuple[str, dict[str, str]]) -> None:
    url, env = empty
    refused = keygate("user", "list", env=env)
    assert refused.returncode == 2
    assert _only_line(refused) == "error: the database holds no keygate schema yet: run `keygate init` to set it up"
    assert _revision(url) == ()


# What an everyday command must not load: the server, the console, Alembic (only migrations need it),
# the metrics exporter, the SDK and its HTTP client, and the Redis client (with KEYGATE_REDIS_URL too:
# it is loaded by the first command that uses Redis, about 40 ms).
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "jinja2", "alembic", "mako", "prometheus_client", "httpx",
               "keygate.api", "keygate.console", "keygate.sdk")

_LOADED = """
import json, sys
sys.argv = ["keygate", *sys.argv[1:]]
from keygate.cli.entry import main
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture
def cli_env(kg: Keygate, settings: Settings) -> dict[str, str]:
    return clean_env(**settings_env(settings))


def _loaded(command: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """The modules ``keygate COMMAND`` had loaded when it finished (it must succeed)."""
    result = subprocess.run([sys.executable, "-c", _LOADED, *command], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded["code"] in (0, None), result.stdout + result.stderr
    return list(loaded["modules"])


@pytest.mark.parametrize("redis", [False, True], ids=["without Redis", "with Redis"])
@pytest.mark.parametrize("command", [("key", "list", "--user"), ("user", "list")], ids=lambda c: " ".join(c[:2]))
async def test_an_everyday_command_loads_only_what_it_uses(cli_env: dict[str, str], make_user, command: tuple[str, ...],  # type: ignore[no-untyped-def]
                                                           redis: bool) -> None:
    if redis:
        need(redis_available(), "Redis at 127.0.0.1:6379")
        cli_env = {**cli_env, "KEYGATE_REDIS_URL": REDIS_URL, "KEYGATE_REDIS_NAMESPACE": f"kgcli{secrets.token_hex(4)}"}
    if command[-1] == "--user":
        command = (*command, str((await make_user()).user_id))
    forbidden = (*SERVER_ONLY, "redis")
    heavy = sorted(m for m in _loaded(command, cli_env) if m.split(".")[0] in forbidden or m.startswith(forbidden))
    assert heavy == []


async def test_a_command_that_uses_redis_loads_it_and_reaches_it(cli_env: dict[str, str], make_user) -> None:  # type: ignore[no-untyped-def]
    """``keygate user unlock`` clears the user's failure counters where they are kept: in Redis."""
    import redis as redis_client

    need(redis_available(), "Redis at 127.0.0.1:6379")
    namespace = f"kgcli{secrets.token_hex(4)}"
    env = {**cli_env, "KEYGATE_REDIS_URL": REDIS_URL, "KEYGATE_REDIS_NAMESPACE": namespace}
    user = await make_user()
    r = redis_client.Redis.from_url(REDIS_URL)
    try:
        counted, blocked = f"{namespace}:f:name:{user.username.lower()}", f"{namespace}:b:name:{user.username.lower()}"
        r.set(counted, 50)  # as RedisState keeps a name's failures and its lockout
        r.set(blocked, 1, px=3_600_000)
        assert "redis" in _loaded(("user", "unlock", user.username), env)
        assert r.get(counted) is None and r.get(blocked) is None
    finally:
        for k in r.scan_iter(f"{namespace}:*"):
            r.delete(k)
        r.close()


_HASHES_AT_IMPORT = """
import argon2
calls = []
original = argon2.PasswordHasher.hash
def counted(self, *args, **kwargs):
    calls.append(1)
    return original(self, *args, **kwargs)
argon2.PasswordHasher.hash = counted
import keygate, keygate.domain.passwords, keygate.service, keygate.cli.main
print(len(calls))
"""


def test_importing_keygate_hashes_no_password() -> None:
    """The dummy hash (an unknown username is checked against it) is not made at import: every CLI
    command paid a whole Argon2 hash for it."""
    result = subprocess.run([sys.executable, "-c", _HASHES_AT_IMPORT], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


async def test_a_server_makes_the_dummy_hash_at_start_before_its_first_sign_in(settings: Settings) -> None:
    """So that the first refusal of an unknown username after a start costs one hash, like any other."""
    from keygate.domain import passwords

    passwords._dummy_hash = None  # as in a process that has just started
    server = Keygate(settings, create_master_key=False)
    try:
        await server.start_background()
        assert passwords._dummy_hash is not None
        assert passwords.verify_password(None, "any password at all") is False
    finally:
        await server.close()
