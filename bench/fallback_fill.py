"""A plain bulk fill for ``bench/run.py --scale``, used only while bench/scale_fill.py (the fast one,
with its own sample of credentials) is not there: users, keys (each with its own sealed secret, in
the default replay mode) and live key sessions, inserted with SQLAlchemy Core in large batches.

Nothing here is a use case: it writes rows as the repositories would, for measuring only.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from keygate.config import Settings
from keygate.domain.keys import new_api_key, new_nonce, new_secret
from keygate.domain.passwords import hash_password
from keygate.domain.sessions import hash_token, new_token
from keygate.service import Keygate
from keygate.service.keys import secret_context
from keygate.store.tables import api_keys, sessions, users

BATCH = 5000


async def fill_async(settings: Settings, n_users: int, n_keys: int, n_sessions: int) -> dict[str, Any]:
    kg = Keygate(settings)
    started = time.monotonic()
    try:
        await kg.start(bootstrap_admin=False)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        expires = now + timedelta(days=1)
        password_hash = hash_password("fill-" + new_secret())  # one hash for every filled user: nobody signs in as them
        async with kg.engine.begin() as conn:
            first = int((await conn.execute(select(func.coalesce(func.max(users.c.user_id), 0)))).scalar_one()) + 1
        n_users = max(n_users, 1 if n_keys else 0)
        user_ids = list(range(first, first + n_users))
        for lo in range(0, n_users, BATCH):
            rows = [{"user_id": uid, "username": f"fill{uid}", "email": "", "password_hash": password_hash, "is_admin": False,
                     "locked": False, "account_id": uid, "created_at": now} for uid in user_ids[lo:lo + BATCH]]
            async with kg.engine.begin() as conn:
                await conn.execute(users.insert(), rows)
        key_owner: list[tuple[str, int]] = []
        for lo in range(0, n_keys, BATCH):
            rows = []
            for i in range(lo, min(lo + BATCH, n_keys)):
                api_key, uid = new_api_key(), user_ids[i % n_users]
                rows.append({"api_key": api_key, "user_id": uid, "label": "fill", "permissions": "", "ip_allowlist": "",
                             "sealed_secret": kg.box.seal(new_secret(), secret_context(api_key)), "nonce": new_nonce(),
                             "created_at": now, "updated_at": now, "replay_mode": settings.default_replay_mode,
                             "secret_serial": 1, "nonce_spread": False, "nonce_count": 0})
                key_owner.append((api_key, uid))
            async with kg.engine.begin() as conn:
                await conn.execute(api_keys.insert(), rows)
        issued = time.time()
        for lo in range(0, n_sessions, BATCH):
            rows = []
            for i in range(lo, min(lo + BATCH, n_sessions)):
                api_key, uid = key_owner[i % len(key_owner)] if key_owner else (None, user_ids[i % n_users])
                rows.append({"token_hash": hash_token(new_token(issued)), "user_id": uid, "kind": "key", "permissions": "",
                             "api_key": api_key, "client_ip": "127.0.0.1", "created_at": now, "last_seen_at": now,
                             "expires_at": expires, "key_serial": 1})
            async with kg.engine.begin() as conn:
                await conn.execute(sessions.insert(), rows)
    finally:
        await kg.close()
    return {"users": n_users, "keys": n_keys, "sessions": n_sessions, "seconds": round(time.monotonic() - started, 1)}


def fill(settings: Settings, n_users: int, n_keys: int, n_sessions: int) -> dict[str, Any]:
    return asyncio.run(fill_async(settings, n_users, n_keys, n_sessions))
