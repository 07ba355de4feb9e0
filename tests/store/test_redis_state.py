"""Nonce claims in Redis decided in batches (store/redis_state.py): one script call for a batch, and
the verdicts those claims would get one at a time."""

from __future__ import annotations

import asyncio
import secrets

import redis

from keygate.store.redis_state import RedisState
from support import need, redis_available

REDIS_URL = "redis://127.0.0.1:6379/0"


async def test_unique_claims_at_once_accept_each_nonce_once_and_expire_with_their_window() -> None:
    need(redis_available(), "Redis at 127.0.0.1:6379")
    namespace = f"kgtest{secrets.token_hex(4)}"
    one, other = RedisState(REDIS_URL, namespace), RedisState(REDIS_URL, namespace)  # two processes' worth
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        nonces = [secrets.token_urlsafe(12) for _ in range(24)]
        sent = nonces + nonces[:8]  # 8 sent twice: in the same batch or the next, by either process
        verdicts = await asyncio.gather(*(
            (one if i % 2 else other).claim_unique("k1", n, 7) for i, n in enumerate(sent)))
        accepted = [n for n, ok in zip(sent, verdicts, strict=True) if ok]
        assert sorted(accepted) == sorted(nonces)  # each nonce once, whichever claim came first
        assert one._uniques.batches + other._uniques.batches < len(sent)  # claims at once share round trips
        assert not await one.claim_unique("k1", nonces[0], 7)
        assert await one.claim_unique("k2", nonces[0], 7)  # another key's nonces are its own
        assert 5 <= raw.ttl(f"{namespace}:u:k1:{nonces[-1]}") <= 7  # forgotten with its window
    finally:
        for k in raw.scan_iter(f"{namespace}:*"):
            raw.delete(k)
        raw.close()
        await one.close()
        await other.close()
