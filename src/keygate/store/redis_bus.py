"""The shared session tier in Redis: sessions every node can read at once, in front of the database.

(Cache invalidation between nodes does not go through Redis: see ``store.changes``.)
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from redis.exceptions import RedisError

from keygate.domain.errors import ServiceUnavailable
from keygate.domain.permissions import format_permissions, parse_permissions
from keygate.domain.sessions import Session, SessionKind
from keygate.store.batcher import Batcher
from keygate.store.redis_state import UNAVAILABLE, connect
from keygate.telemetry import redis_error

# Every put of a batch in one command: KEYS the sessions' names, ARGV each one's value and seconds to
# live. A pipeline of SETs cost redis-py a packed command and a parsed reply per session (about a
# quarter of a sign-in's CPU on PostgreSQL + Redis); one script call packs one and parses one.
_PUT_MANY = """
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ARGV[2 * i]) end
return #KEYS
"""


def _encode(s: Session) -> str:
    created = s.created_at.isoformat()
    return json.dumps({
        "u": s.user_id, "k": s.kind.value, "p": format_permissions(s.permissions), "a": s.api_key, "i": s.client_ip,
        "c": created, "l": created if s.last_seen_at is s.created_at else s.last_seen_at.isoformat(),
        "e": s.expires_at.isoformat(), "s": s.key_serial,
    })


def _decode(token_hash: str, raw: str | bytes) -> Session:
    d = json.loads(raw)
    return Session(
        token_hash=token_hash, user_id=d["u"], kind=SessionKind(d["k"]), permissions=parse_permissions(d["p"]),
        api_key=d["a"], client_ip=d["i"], created_at=datetime.fromisoformat(d["c"]),
        last_seen_at=datetime.fromisoformat(d["l"]), expires_at=datetime.fromisoformat(d["e"]), key_serial=d.get("s"),
    )


class RedisSessionTier:
    """Sessions shared by all nodes in Redis, in front of the database (which stays the record)."""

    def __init__(self, url: str, namespace: str = "kg") -> None:
        self._ns = namespace
        self._redis = connect(url)
        self._put_script = self._redis.register_script(_PUT_MANY)
        self._puts: Batcher[tuple[str, str, int], None] = Batcher(self._put_many)

    async def get(self, token_hash: str) -> Session | None:
        try:
            raw = await self._redis.get(f"{self._ns}:s:{token_hash}")
        except (RedisError, OSError):
            redis_error("sessions")
            raise ServiceUnavailable(UNAVAILABLE) from None
        return _decode(token_hash, raw) if raw else None

    async def put(self, session: Session, idle: timedelta) -> None:
        """Store the session for every node; answered once Redis has it. Concurrent puts share one
        round trip, one script call (store/batcher.py: at most MAX_BATCH per round trip, each waiting at most
        for the round trip in flight plus its own)."""
        ttl = max(1, int(min((session.expires_at - session.last_seen_at), idle).total_seconds()))
        await self._puts.submit((f"{self._ns}:s:{session.token_hash}", _encode(session), ttl))

    async def _put_many(self, entries: list[tuple[str, str, int]]) -> list[None]:
        try:
            if len(entries) == 1:
                await self._redis.set(entries[0][0], entries[0][1], ex=entries[0][2])
            else:
                args: list[str | int] = []
                for _, value, ttl in entries:
                    args += (value, ttl)
                await self._put_script(keys=[name for name, _, _ in entries], args=args)
        except (RedisError, OSError):
            redis_error("sessions")
            raise ServiceUnavailable(UNAVAILABLE) from None
        return [None] * len(entries)

    async def delete(self, token_hashes: list[str]) -> None:
        if not token_hashes:
            return
        try:
            await self._redis.delete(*[f"{self._ns}:s:{h}" for h in token_hashes])
        except (RedisError, OSError):
            redis_error("sessions")
            raise ServiceUnavailable(UNAVAILABLE) from None

    async def close(self) -> None:
        await self._redis.aclose()
