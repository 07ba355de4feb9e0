"""kill -9 of a server under load loses no audit record of a change, and authentication events only
from its last moments: changes are written with their audit row in one transaction, sign-ins within
0.1 s."""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from keygate.store.tables import audit_events
from support import REDIS_URL, _psql, need, pg_available, redis_available, start_server

LOAD_SECONDS = 3.0  # at least; then until the load has made enough changes
MARGIN = 0.5  # authentication events answered this long before the kill must all be on disk


@pytest.fixture(params=["sqlite", "postgresql+redis"])
def fresh_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    name = None
    redis = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'keygate.db'}"
    else:
        need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
        need(redis_available(), "Redis at 127.0.0.1:6379")
        name = f"keygate_kill_{uuid.uuid4().hex[:10]}"
        _psql(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        redis = REDIS_URL
    yield Settings(data_dir=tmp_path, database_url=url, master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                   default_replay_mode="compatible", redis_url=redis, redis_namespace=f"kgkill{secrets.token_hex(4)}")
    if name:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_kill_9_under_load_loses_no_change_record(fresh_settings: Settings) -> None:
    kg = Keygate(fresh_settings, serving=False)
    await kg.start(bootstrap_admin=False)
    password = secrets.token_urlsafe(16)
    user = await kg.users.create(OPERATOR, "trader", password)
    signer = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist())
    await kg.close()
    server = start_server(fresh_settings)
    created: list[str] = []
    deleted: list[str] = []
    signed_in: list[float] = []  # wall-clock times of 200 answers to AuthenticateUser
    stop = False

    async def sign_ins(client: httpx.AsyncClient) -> None:
        while not stop:
            nonce = str(secrets.randbelow(10**12))
            headers = {"APIKey": signer.key.api_key, "UserId": str(user.user_id), "Nonce": nonce,
                       "Signature": compute_signature(signer.secret, nonce, user.user_id, signer.key.api_key)}
            try:
                r = await client.post("/AP/AuthenticateUser", headers=headers)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                signed_in.append(time.time())

    async def key_churn(client: httpx.AsyncClient, token: str) -> None:
        while not stop:
            try:
                r = await client.post("/AP/AddUserAPIKey", headers={"aptoken": token}, json={"Label": "churn"})
                if r.status_code != 200:
                    return
                api_key = r.json()["APIKey"]
                created.append(api_key)
                r = await client.post("/AP/RemoveUserAPIKey", headers={"aptoken": token}, json={"APIKey": api_key})
                if r.status_code == 200:
                    deleted.append(api_key)
            except httpx.HTTPError:
                return

    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        token = (await client.post("/AP/AuthenticateUser", json={"UserName": "trader", "Password": password})).json()["SessionToken"]
        tasks = [asyncio.create_task(sign_ins(client)) for _ in range(6)] + [asyncio.create_task(key_churn(client, token)) for _ in range(3)]
        await asyncio.sleep(LOAD_SECONDS)
        deadline = time.monotonic() + 30  # a slow machine makes changes slowly: load until there are enough
        while (len(deleted) <= 10 or len(signed_in) <= 100) and time.monotonic() < deadline and server.process.poll() is None:
            await asyncio.sleep(0.1)
        server.process.send_signal(signal.SIGKILL)  # no shutdown, no final flush
        killed_at = time.time()
        server.process.wait(10)
        stop = True
        await asyncio.gather(*tasks)

    engine = create_async_engine(fresh_settings.resolved_database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(audit_events.c.action, audit_events.c.api_key, audit_events.c.at))).all()
    finally:
        await engine.dispose()
    creations = {k for action, k, _ in rows if action == "key.create"}
    deletions = {k for action, k, _ in rows if action == "key.delete"}
    assert len(created) > 5 and len(deleted) > 5, "the load made changes"
    assert not set(created) - creations, f"{len(set(created) - creations)} of {len(created)} key creations lost their audit row"
    assert not set(deleted) - deletions, f"{len(set(deleted) - deletions)} of {len(deleted)} key deletions lost their audit row"
    cutoff = datetime.fromtimestamp(killed_at - MARGIN, timezone.utc)
    answered_early = sum(1 for t in signed_in if t < killed_at - MARGIN)
    written_early = sum(1 for action, _, at in rows if action == "auth.key" and at.replace(tzinfo=timezone.utc) < cutoff + timedelta(seconds=0.05))
    assert answered_early > 50, "the load signed in"
    assert written_early >= answered_early, f"sign-ins answered {MARGIN}s before the kill: {answered_early}, audit rows: {written_early}"
