"""A server that cannot read the change log cannot know what it missed: it refuses to authenticate
(503) until it can read it again, then serves on by itself."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from support import _psql, need, pg_available, start_server, stop_server


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'keygate.db'}"
        name = None
    else:
        need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
        name = f"keygate_log_{uuid.uuid4().hex[:10]}"
        _psql(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    yield Settings(data_dir=tmp_path, database_url=url, master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                   default_replay_mode="compatible")
    if name:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait(predicate, seconds: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


async def test_unreadable_change_log_fails_closed_then_recovers(fresh_settings: Settings) -> None:
    kg = Keygate(fresh_settings, serving=False)
    await kg.start(bootstrap_admin=False)
    user = await kg.users.create(OPERATOR, "trader", secrets.token_urlsafe(16))
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist())
    await kg.close()
    headers = {"APIKey": created.key.api_key, "UserId": str(user.user_id), "Nonce": "1",
               "Signature": compute_signature(created.secret, "1", user.user_id, created.key.api_key)}
    server = start_server(fresh_settings)
    engine = create_async_engine(fresh_settings.resolved_database_url)
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            token = http.post("/AP/AuthenticateUser", headers=headers).json()["SessionToken"]
            assert http.get("/AP/GetUserInfo", headers={"aptoken": token}).status_code == 200

            async with engine.begin() as conn:  # the log disappears from under the server
                await conn.execute(text("ALTER TABLE changes RENAME TO changes_away"))
            assert await asyncio.to_thread(_wait, lambda: http.get("/AP/GetUserInfo", headers={"aptoken": token}).status_code == 503)
            r = http.get("/AP/GetUserInfo", headers=headers)
            assert r.status_code == 503 and r.json()["errorcode"] == 102 and "change log" in r.json()["errormsg"]
            assert http.get("/AP/Ping").status_code == 200, "the server itself stays up"

            async with engine.begin() as conn:
                await conn.execute(text("ALTER TABLE changes_away RENAME TO changes"))
            assert await asyncio.to_thread(_wait, lambda: http.get("/AP/GetUserInfo", headers={"aptoken": token}).status_code == 200)
            assert "Traceback" not in server.log()
    finally:
        await engine.dispose()
        stop_server(server)
