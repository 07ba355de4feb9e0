"""A database made by keygate before issue 10 (commit 7caa2ba) upgrades on the first start of today's code.

The old code runs from its own source tree (``git archive``), in a process of its own, and fills a fresh
database: users (one with TOTP, one locked), keys (one rotated with a grace period), sessions of every
kind, audit rows. Then a real ``keygate serve`` of today's code starts on that database, applies whatever
migrations now exist, and must keep every row and honour every secret, password, TOTP secret and token.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, select
from store_support import DATABASES, fresh_database, schema_differences

import keygate
from keygate.config import Settings
from keygate.store.database import MIGRATIONS, create_engine
from support import Server, need, settings_env, start_server, stop_server

BASE_COMMIT = "7caa2ba"  # the last commit before issue 10's changes
REPO = Path(__file__).resolve().parents[2]
SEED = Path(__file__).with_name("seed_old_database.py")
KEPT_TABLES = ("users", "api_keys", "sessions", "audit_events")

Rows = dict[str, dict[tuple[Any, ...], dict[str, Any]]]


@dataclass
class Upgraded:
    server: Server  # today's code, serving the upgraded database
    remembered: dict[str, Any]  # what the old code handed out: passwords, TOTP and key secrets, tokens
    before: Rows  # as the old code left them
    after: Rows  # once today's server had started (and migrated), before any request
    differences: list[object]  # between the upgraded schema and keygate.store.tables


@pytest.fixture(scope="module")
def old_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``src/`` of the base commit, exported from this repository's history."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASE_COMMIT, "src"], check=False, capture_output=True, timeout=60)
    need(archive.returncode == 0, f"git with commit {BASE_COMMIT} in this repository's history")
    dest = tmp_path_factory.mktemp(f"keygate-{BASE_COMMIT}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


async def _read_rows(url: str) -> tuple[Rows, str, list[object]]:
    """Every row of the kept tables, keyed by primary key; the schema's Alembic revision; how the schema
    differs from the declared tables."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            schema = MetaData()
            await conn.run_sync(schema.reflect)
            rows: Rows = {}
            for name in KEPT_TABLES:
                table = schema.tables[name]
                key = [c.name for c in table.primary_key.columns]
                result = (await conn.execute(select(table))).mappings().all()
                rows[name] = {tuple(r[k] for k in key): dict(r) for r in result}
            version = (await conn.execute(select(schema.tables["alembic_version"]))).scalar_one()
            differences = await conn.run_sync(schema_differences)
    finally:
        await engine.dispose()
    return rows, version, differences


def _seed_with_old_code(old_source: Path, settings: Settings) -> dict[str, Any]:
    # The code before these changes knew no "window" mode: its own default was "increasing".
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(old_source), "KEYGATE_DEFAULT_REPLAY_MODE": "increasing"}
    check = subprocess.run([sys.executable, "-c", "import keygate; print(keygate.__file__)"], check=False, env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.strip().startswith(str(old_source)), f"the old code is not the one imported: {check.stdout}{check.stderr}"
    seeded = subprocess.run([sys.executable, str(SEED)], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert seeded.returncode == 0, seeded.stderr
    return json.loads(seeded.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=DATABASES)
def upgraded(request: pytest.FixtureRequest, old_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upgraded]:
    """Made once per database for the module: each test below only reads, or signs in afresh."""
    folder = tmp_path_factory.mktemp(f"upgrade-{request.param}")
    with fresh_database(request.param, folder) as url:
        settings = Settings(data_dir=folder / "data", database_url=url,
                            master_key=base64.b64encode(secrets.token_bytes(32)).decode())
        settings.data_dir.mkdir()
        remembered = _seed_with_old_code(old_source, settings)
        before, old_version, _ = asyncio.run(_read_rows(url))
        assert old_version == "0002"
        server = start_server(settings)
        try:
            after, version, differences = asyncio.run(_read_rows(url))
            assert version == ScriptDirectory(str(MIGRATIONS)).get_current_head()
            yield Upgraded(server, remembered, before, after, differences)
        finally:
            stop_server(server)


def _post(server: Server, endpoint: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/AP/{endpoint}", timeout=10, **kwargs)


def test_the_upgraded_schema_is_the_declared_one(upgraded: Upgraded) -> None:
    assert upgraded.differences == []


def test_every_row_is_kept(upgraded: Upgraded) -> None:
    remembered, before, after = upgraded.remembered, upgraded.before, upgraded.after
    assert len(before["users"]) == 4 and len(before["api_keys"]) == len(remembered["keys"])
    assert len(before["sessions"]) >= len(remembered["sessions"]) and len(before["audit_events"]) >= 10
    for table in KEPT_TABLES:
        assert after[table].keys() == before[table].keys(), table
        for key, old in before[table].items():
            new = after[table][key]
            assert {column: new.get(column) for column in old} == old, (table, key)


def test_every_key_secret_still_opens(upgraded: Upgraded) -> None:
    server, remembered = upgraded.server, upgraded.remembered
    carol = remembered["users"]["carol"]["user_id"]
    signed_in = 0
    for key in remembered["keys"]:
        for secret in filter(None, (key["secret"], key.get("previous_secret"))):
            with keygate.Client(server.base_url, key["user_id"], key["api_key"], secret) as client:
                if key["user_id"] == carol:  # locked by the administrator before the upgrade: still locked
                    with pytest.raises(keygate.KeygateAPIError):
                        client.authenticate()
                    continue
                info = client.call("GetUserInfo")
                assert info["UserId"] == key["user_id"]
                signed_in += 1
    assert signed_in == len(remembered["keys"])  # four keys outside carol's, one of them with two secrets


def test_every_session_token_still_answers(upgraded: Upgraded) -> None:
    server, remembered = upgraded.server, upgraded.remembered
    for session in remembered["sessions"]:
        reply = _post(server, "GetUserInfo", headers={"aptoken": session["token"]})
        assert reply.status_code == 200, (session["kind"], reply.text)
        assert reply.json()["UserId"] == session["user_id"]


def test_passwords_and_totp_secrets_still_open(upgraded: Upgraded) -> None:
    server, remembered = upgraded.server, upgraded.remembered
    alice = remembered["users"]["alice"]
    reply = _post(server, "AuthenticateUser", json={"UserName": "alice", "Password": alice["password"]}).json()
    assert reply["Authenticated"] is True and reply["User"]["UserId"] == alice["user_id"]

    bob = remembered["users"]["bob"]
    pending = _post(server, "AuthenticateUser", json={"UserName": "bob", "Password": bob["password"]}).json()
    assert pending["Requires2FA"] is True
    code = pyotp.TOTP(bob["totp_secret"]).now()
    done = _post(server, "Authenticate2FA", json={"Code": code, "Pending2FaToken": pending["Pending2FaToken"]}).json()
    assert done["Authenticated"] is True and done["UserId"] == bob["user_id"]


def test_the_audit_trail_is_served_whole(upgraded: Upgraded) -> None:
    server, remembered, before = upgraded.server, upgraded.remembered, upgraded.before
    admin = next(s for s in remembered["sessions"] if s["kind"] == "password")
    reply = _post(server, "GetAuditLog", headers={"aptoken": admin["token"]}, json={"Limit": 1000})
    assert reply.status_code == 200, reply.text
    served = {event["EventId"]: event for event in reply.json()}
    for (event_id,), row in before["audit_events"].items():
        assert event_id in served
        assert (served[event_id]["Action"], served[event_id]["Outcome"]) == (row["action"], row["outcome"])
    actions = {row["action"] for row in before["audit_events"].values()}
    assert {"user.create", "key.create", "auth.key", "auth.password", "user.2fa.enable", "user.lock"} <= actions
