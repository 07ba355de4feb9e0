"""Many users, keys and sessions in the test database, quickly, for the listing tests (console, CLI).

Rows are inserted through the repositories in one transaction (hashing hundreds of passwords, or a
transaction per key, would take most of a minute); nobody signs in as these users. Keys hold real
sealed secrets and sessions real token hashes, as the service makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select

from keygate.domain.iprules import IpAllowlist
from keygate.domain.keys import ApiKey, new_api_key, new_nonce, new_secret
from keygate.domain.permissions import ALL_PERMISSIONS
from keygate.domain.replay import ReplayMode
from keygate.domain.sessions import Session, SessionKind, hash_token, new_token
from keygate.service import Keygate
from keygate.service.keys import secret_context
from keygate.store.repositories import KeyRepository, SessionRepository
from keygate.store.tables import users
from support import unique_name


@dataclass
class Seeded:
    tag: str  # every seeded username starts with it: f"{tag}{i:04d}"
    user_ids: list[int]  # in name order
    keys: dict[int, str]  # user id -> its API key
    sessions: dict[int, str]  # user id -> the token hash of its session

    def name(self, i: int) -> str:
        return f"{self.tag}{i:04d}"


async def seed(kg: Keygate, count: int, with_keys: bool = True, with_sessions: bool = True, tag: str = "") -> Seeded:
    tag = tag or unique_name("ls")
    now = datetime.now(timezone.utc)
    rows = [{"username": f"{tag}{i:04d}", "email": "", "password_hash": "!", "is_admin": False, "locked": False,
             "account_id": 0, "created_at": now} for i in range(count)]
    async with kg.engine.begin() as conn:
        await conn.execute(insert(users), rows)
        found = (await conn.execute(select(users.c.user_id).where(users.c.username.like(f"{tag}%"))
                                    .order_by(users.c.username))).scalars().all()
    ids = list(found)
    keys: dict[int, str] = {}
    sessions: dict[int, str] = {}
    made: list[Session] = []
    async with kg.engine.begin() as conn:
        for n, user_id in enumerate(ids):
            at = now + timedelta(microseconds=n)
            if with_keys:
                api_key = new_api_key()
                await KeyRepository(kg.engine).insert(ApiKey(
                    api_key=api_key, user_id=user_id, label="seeded", permissions=frozenset(), ip_allowlist=IpAllowlist(),
                    sealed_secret=kg.box.seal(new_secret(), secret_context(api_key)), nonce=new_nonce(), created_at=at,
                    updated_at=at, replay_mode=ReplayMode.COMPATIBLE), conn)
                keys[user_id] = api_key
            if with_sessions:
                token_hash = hash_token(new_token(at.timestamp()))
                made.append(Session(token_hash, user_id, SessionKind.PASSWORD, ALL_PERMISSIONS, None, "127.0.0.1", at, at,
                                    at + timedelta(hours=1)))
                sessions[user_id] = token_hash
    await SessionRepository(kg.engine).insert_many(made)
    return Seeded(tag, ids, keys, sessions)
