"""The shared session tier in Redis (store/redis_bus.py): what one node puts, every node reads.

Sessions issued together are put in one round trip (one script call for the batch): each is stored
whole, under its own name, with the time to live the session has left (at most the idle timeout),
and a second tier, another node's, reads every one of them at once.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timedelta, timezone

import redis

from keygate.domain.sessions import Session, SessionKind, hash_token, new_token
from keygate.store.redis_bus import RedisSessionTier
from support import need, redis_available

REDIS_URL = "redis://127.0.0.1:6379/0"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def a_session(i: int, lifetime: timedelta) -> Session:
    now = utcnow()
    return Session(hash_token(new_token(now.timestamp())), 1000 + i, SessionKind.KEY, frozenset(), f"key{i:04d}",
                   f"127.0.0.{i % 250 + 1}", now, now, now + lifetime, i % 3)


async def test_sessions_put_together_are_read_whole_by_another_node() -> None:
    need(redis_available(), "Redis at 127.0.0.1:6379")
    namespace = f"kgtest{secrets.token_hex(4)}"
    issuing, other = RedisSessionTier(REDIS_URL, namespace), RedisSessionTier(REDIS_URL, namespace)
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        made = [a_session(i, timedelta(hours=8) if i % 2 else timedelta(seconds=90)) for i in range(64)]
        await asyncio.gather(*(issuing.put(s, timedelta(minutes=30)) for s in made))
        assert issuing._puts.batches < 64  # put together: fewer round trips than sessions
        for s in made:
            assert await other.get(s.token_hash) == s
            ttl = raw.ttl(f"{namespace}:s:{s.token_hash}")
            assert (1790 <= ttl <= 1800) if s.user_id % 2 else (80 <= ttl <= 90), ttl  # the idle timeout, or what is left
        assert await other.get(hash_token(new_token(utcnow().timestamp()))) is None
        await issuing.delete([made[0].token_hash])
        assert await other.get(made[0].token_hash) is None
    finally:
        for k in raw.scan_iter(f"{namespace}:*"):
            raw.delete(k)
        raw.close()
        await issuing.close()
        await other.close()
