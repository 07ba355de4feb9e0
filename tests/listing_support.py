"""Many users, keys and sessions in the test database, quickly, for the listing tests (console, CLI).

Users are inserted as rows (hashing hundreds of passwords would take most of a minute; nobody signs
in as them); their keys and sessions are made through the service, as the console and the API do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import insert, select

from keygate.domain.iprules import IpAllowlist
from keygate.domain.sessions import SessionKind, hash_token
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
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


async def seed(kg: Keygate, count: int, with_keys: bool = True, with_sessions: bool = True) -> Seeded:
    tag = unique_name("ls")
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
    for user_id in ids:
        if with_keys:
            keys[user_id] = (await kg.keys.create(OPERATOR, user_id, frozenset(), IpAllowlist(), "seeded")).key.api_key
        if with_sessions:
            token = await kg.sessions.issue(user_id, SessionKind.PASSWORD, None, "127.0.0.1")
            sessions[user_id] = hash_token(token)
    return Seeded(tag, ids, keys, sessions)
