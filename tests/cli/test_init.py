"""``keygate init`` in a fresh data folder: master key (0600), database, first admin password shown once."""

from __future__ import annotations

import base64
import re
import secrets
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import clean_env, create_pg_database, keygate, need, pg_available

from keygate.config import Settings
from keygate.service import Keygate
from keygate.service.auth import SessionGrant

PASSWORD_LINE = re.compile(r"password: (\S+)")


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A data folder that does not exist yet; for PostgreSQL also a brand-new, empty database."""
    data_dir = tmp_path / "var"
    if request.param == "sqlite":
        yield clean_env(KEYGATE_DATA_DIR=str(data_dir))
        return
    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"keygate_init_{uuid.uuid4().hex[:12]}"
    create_pg_database(f'CREATE DATABASE "{name}"')
    try:
        # A plain postgresql:// URL, as an operator would write it; keygate picks the async driver.
        yield clean_env(KEYGATE_DATA_DIR=str(data_dir), KEYGATE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{name}")
    finally:
        create_pg_database(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_init_sets_everything_up_and_shows_the_password_once(fresh_env: dict[str, str]) -> None:
    data_dir = Path(fresh_env["KEYGATE_DATA_DIR"])
    first = keygate("init", env=fresh_env)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stdout + first.stderr

    key_file = data_dir / "master.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "master key" in first.stdout.lower()
    if "KEYGATE_DATABASE_URL" not in fresh_env:
        assert (data_dir / "keygate.db").is_file()
        assert stat.S_IMODE((data_dir / "keygate.db").stat().st_mode) == 0o600, "password hashes are for the service only"
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700

    passwords = PASSWORD_LINE.findall(first.stdout)
    assert len(passwords) == 1, first.stdout
    assert "username: admin" in first.stdout
    password = passwords[0]

    master_key_before = key_file.read_bytes()
    second = keygate("init", env=fresh_env)
    assert second.returncode == 0, second.stderr
    assert "password" not in second.stdout.lower()
    assert password not in second.stdout + second.stderr
    assert key_file.read_bytes() == master_key_before

    # The printed password really signs the admin in, against the database init created.
    settings = Settings(data_dir=data_dir, database_url=_db_url(fresh_env))
    service = Keygate(settings, create_master_key=False)
    try:
        grant = await service.auth.authenticate_password("admin", password, "127.0.0.1")
        assert isinstance(grant, SessionGrant)
        assert grant.user.is_admin
    finally:
        await service.close()


def _db_url(env: dict[str, str]) -> str:
    raw = env.get("KEYGATE_DATABASE_URL", "")
    return raw.replace("postgresql://", "postgresql+asyncpg://", 1) if raw else ""


def test_init_refuses_a_world_readable_master_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env = clean_env(KEYGATE_DATA_DIR=str(data_dir))
    assert keygate("init", env=env).returncode == 0
    (data_dir / "master.key").chmod(0o644)
    result = keygate("init", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "chmod 600" in output


@pytest.mark.parametrize("command", [("init",), ("user", "list"), ("key", "list", "--user", "admin")])
def test_an_unreachable_database_is_a_clear_error(tmp_path: Path, command: tuple[str, ...]) -> None:
    env = clean_env(
        KEYGATE_DATA_DIR=str(tmp_path / "var"),
        KEYGATE_DATABASE_URL="postgresql://keygate:pw-not-to-echo@127.0.0.1:1/keygate",
        KEYGATE_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    result = keygate(*command, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert "cannot open the database" in output
    assert "pw-not-to-echo" not in output
    assert "password:" not in output  # no admin was made
