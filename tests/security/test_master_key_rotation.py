"""Master-key rotation: every secret is re-sealed under a new key while a server keeps serving."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pyotp
import pytest
from abuse_helpers import signed
from sqlalchemy import select

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.domain.secretbox import key_id_of
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from keygate.store.master_key import read_key_file
from keygate.store.tables import api_keys, users
from support import _psql, settings_env, start_server, stop_server


@pytest.fixture
def own_deployment(settings: Settings, tmp_path) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    """A deployment of its own (fresh database, master key in a key file), since rotation touches every row."""
    if settings.resolved_database_url.startswith("postgresql"):
        name = f"keygate_rotate_{uuid.uuid4().hex[:10]}"
        _psql(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    else:
        name, url = "", f"sqlite+aiosqlite:///{tmp_path / 'rotate.db'}"
    yield settings.model_copy(update=dict(data_dir=tmp_path, database_url=url, master_key=None))
    if name:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_rotation_under_load_keeps_every_key_working(own_deployment: Settings):
    kg = Keygate(own_deployment)  # creates data_dir/master.key, mode 0600
    await kg.start(bootstrap_admin=False)
    old_master, _ = read_key_file(own_deployment.resolved_master_key_file)
    user = await kg.users.create(OPERATOR, "rotator", "rotator-password-1")
    owner = OPERATOR
    created = [await kg.keys.create(owner, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE) for _ in range(12)]
    totp_user = await kg.users.create(OPERATOR, "rotator-2fa", "rotator-password-2")
    secret, _ = await kg.users.begin_totp(OPERATOR, totp_user.user_id)
    await kg.users.confirm_totp(OPERATOR, totp_user.user_id, pyotp.TOTP(secret).now())
    await kg.close()

    server = start_server(own_deployment)
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal done
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            while not stop.is_set():
                for c in created:
                    r = http.post("/AP/AuthenticateUser", headers=signed(c, user.user_id, "1"))
                    done += 1
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text}")

    workers = [threading.Thread(target=load) for _ in range(2)]
    try:
        for w in workers:
            w.start()
        time.sleep(0.5)
        env = {**os.environ, **settings_env(own_deployment), "KEYGATE_MASTER_KEY": ""}
        result = subprocess.run([sys.executable, "-m", "keygate", "rotate-master-key"], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "re-encrypted" in result.stdout
        # A key created by the running server right after the rotation is sealed under the new key.
        time.sleep(1.5)
        stop.set()
        for w in workers:
            w.join()
        assert done > 50, "the load did run"
        assert failures == [], failures[:3]

        new_master, previous = read_key_file(own_deployment.resolved_master_key_file)
        assert new_master != old_master and old_master in previous
        assert own_deployment.resolved_master_key_file.stat().st_mode & 0o777 == 0o600

        check = Keygate(own_deployment, create_master_key=False)
        async with check.engine.connect() as conn:
            sealed = [bytes(r[0]) for r in (await conn.execute(select(api_keys.c.sealed_secret))).all()]
            sealed += [bytes(r[0]) for r in (await conn.execute(select(users.c.sealed_totp_secret).where(users.c.sealed_totp_secret.is_not(None)))).all()]
        await check.engine.dispose()
        assert sealed and all(s[1:5] == key_id_of(new_master) for s in sealed)

        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            for c in created:
                assert http.post("/AP/AuthenticateUser", headers=signed(c, user.user_id, "2")).status_code == 200
            pending = http.post("/AP/AuthenticateUser", json={"UserName": "rotator-2fa", "Password": "rotator-password-2"}).json()
            r = http.get("/AP/Authenticate2FA", params={"Code": pyotp.TOTP(secret).now()}, headers={"Pending2FaToken": pending["Pending2FaToken"]})
            assert r.status_code == 200 and r.json()["Authenticated"] is True, "TOTP seeds were re-sealed too"
    finally:
        stop.set()
        stop_server(server)
    await asyncio.sleep(0)


async def test_with_the_key_in_the_environment_old_values_are_resealed_under_the_new_one(own_deployment: Settings, monkeypatch):
    import base64

    old_key, new_key = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    first = Keygate(own_deployment.model_copy(update=dict(master_key=old_key)))
    await first.start(bootstrap_admin=False)
    user = await first.users.create(OPERATOR, "env-rotator", "rotator-password-3")
    created = await first.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.COMPATIBLE)
    await first.close()

    monkeypatch.delenv("KEYGATE_PREVIOUS_MASTER_KEYS", raising=False)
    refused = Keygate(own_deployment.model_copy(update=dict(master_key=new_key)))
    with pytest.raises(RuntimeError, match="KEYGATE_PREVIOUS_MASTER_KEYS"):
        await refused.rotate_master_key()
    await refused.close()

    monkeypatch.setenv("KEYGATE_PREVIOUS_MASTER_KEYS", old_key)
    second = Keygate(own_deployment.model_copy(update=dict(master_key=new_key)))
    await second.start(bootstrap_admin=False)
    assert await second.rotate_master_key() == 1
    await second.close()

    monkeypatch.delenv("KEYGATE_PREVIOUS_MASTER_KEYS")
    third = Keygate(own_deployment.model_copy(update=dict(master_key=new_key)))
    await third.start(bootstrap_admin=False)
    key = await third.keys.lookup(created.key.api_key)
    assert key is not None and third.keys.secret_of(key) == created.secret, "the new key alone opens it now"
    await third.close()
