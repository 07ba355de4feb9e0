"""A deleted key leaves no replay state behind, on the database and in Redis.

A ``window`` key's remembered nonces never expire (they are kept by count, not by time), so before
this, every deleted key left up to ``KEYGATE_NONCE_WINDOW_SIZE`` of them in ``used_nonces`` or in
Redis for good: state that grew with every key an operator ever deleted. Now the key's deletion
takes them, its highest nonce and its lease, and a server that held the key's lease in memory drops
it without writing it back.
"""

from __future__ import annotations

import secrets
import time

import redis
from sqlalchemy import func, select

from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.service.principal import OPERATOR
from keygate.store.tables import nonce_leases, used_nonces
from support import REDIS_URL


async def remembered(kg, api_key: str, shared_state: str | None) -> int:  # type: ignore[no-untyped-def]
    """How many nonces of the key the store remembers (the database's rows, or Redis's sorted set)."""
    if shared_state is not None:
        r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            return int(r.zcard(f"{kg.settings.redis_namespace}:z:{api_key}"))
        finally:
            r.close()
    async with kg.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(used_nonces).where(
            used_nonces.c.api_key == api_key))).scalar_one())


async def test_deleting_a_key_forgets_its_nonces_and_its_lease(strict_kg, shared_state: str | None) -> None:  # type: ignore[no-untyped-def]
    kg = await strict_kg(default_replay_mode="window")
    owner = await kg.users.create(OPERATOR, "o" + secrets.token_hex(4), secrets.token_urlsafe(16))
    made = await kg.keys.create(OPERATOR, owner.user_id, frozenset(), IpAllowlist())
    kept = await kg.keys.create(OPERATOR, owner.user_id, frozenset(), IpAllowlist())
    assert made.key.replay_mode is ReplayMode.WINDOW
    base = int(time.time() * 1000) * 1000
    size = kg.settings.nonce_window_size
    for key in (made.key.api_key, kept.key.api_key):
        for i in range(40):
            assert await kg.state.claim_window(key, str(base + i), size, 86400)
    leases = getattr(kg.state, "leases", None)
    if leases is not None:
        await leases.close()  # every lease handed back: the windows written where they live
    assert await remembered(kg, made.key.api_key, shared_state) == 40
    assert await kg.state.claim_window(made.key.api_key, str(base + 40), size, 86400)  # leased again, maybe

    await kg.keys.delete(OPERATOR, owner.user_id, made.key.api_key)
    assert await remembered(kg, made.key.api_key, shared_state) == 0
    assert await remembered(kg, kept.key.api_key, shared_state) == 40  # another key's window is untouched
    if leases is not None:
        assert made.key.api_key not in leases.held  # dropped unwritten
        await leases.close()
        assert await remembered(kg, made.key.api_key, shared_state) == 0
    async with kg.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(nonce_leases).where(
            nonce_leases.c.api_key == made.key.api_key))).scalar_one() == 0
    if shared_state is not None:
        r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            assert list(r.scan_iter(f"{kg.settings.redis_namespace}:*:{made.key.api_key}")) == []
        finally:
            r.close()
