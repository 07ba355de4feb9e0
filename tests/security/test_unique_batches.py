"""``unique`` claims (the ``unique`` replay mode, and every Signature v2 nonce) are decided in batches,
like ``window`` claims: concurrent claims share one transaction (SQLite, PostgreSQL) or one pipelined
Redis round trip, and each is decided as if alone: a repeat inside the batch is refused, a nonce
already used is refused, a nonce whose window has passed is accepted again.

Before the batch (one claim, two transactions, at least two statements each), 64 concurrent claims
took 128 statements or more, and 64 Redis round trips.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event

from keygate.config import Settings
from keygate.service import Keygate
from keygate.store.redis_state import RedisState
from keygate.store.shared_state import SqlState
from support import REDIS_URL, need, redis_available

N = 64
WINDOW = 30


def batch(key_a: str, key_b: str) -> tuple[list[tuple[str, str]], list[bool]]:
    claims = [(key_a if i % 2 else key_b, f"v2:{secrets.token_urlsafe(9)}") for i in range(N - 1)]
    claims.insert(7, claims[2])  # a repeat within the batch: the first is accepted, the second refused
    expected = [True] * len(claims)
    expected[7] = False
    return claims, expected


async def test_concurrent_unique_claims_share_a_transaction(kg: Keygate) -> None:
    state = SqlState(kg.engine)
    tag = secrets.token_hex(4)
    claims, expected = batch(f"key-a-{tag}", f"key-b-{tag}")
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if "used_nonces" in statement:
            statements.append(statement)

    event.listen(kg.engine.sync_engine, "before_cursor_execute", count)
    try:
        results = await asyncio.gather(*(state.claim_unique(k, n, WINDOW) for k, n in claims))
    finally:
        event.remove(kg.engine.sync_engine, "before_cursor_execute", count)
    assert list(results) == expected
    assert len(statements) < N // 4, statements
    replays = await asyncio.gather(*(state.claim_unique(k, n, WINDOW) for k, n in claims))
    assert not any(replays)


async def test_a_unique_nonce_comes_back_after_its_window(kg: Keygate) -> None:
    state = SqlState(kg.engine)
    key, nonce = f"key-{secrets.token_hex(4)}", f"v2:{secrets.token_hex(6)}"
    assert await state.claim_unique(key, nonce, 1)
    assert not await state.claim_unique(key, nonce, 1)
    await asyncio.sleep(1.1)
    assert await state.claim_unique(key, nonce, 1)


async def test_concurrent_unique_claims_share_a_redis_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    need(redis_available(), "Redis at 127.0.0.1:6379")
    from redis.asyncio.connection import Connection

    namespace = f"kguniq{secrets.token_hex(4)}"
    state = RedisState(REDIS_URL, namespace)
    writes: list[int] = []  # one per write to the socket that carries a claim (a round trip)
    original = Connection.send_packed_command

    async def counted(self, command, check_health=True):  # type: ignore[no-untyped-def]
        chunks = [command] if isinstance(command, (bytes, str)) else list(command)
        if any(namespace.encode() in (c if isinstance(c, bytes) else str(c).encode()) for c in chunks):
            writes.append(1)
        return await original(self, command, check_health)

    try:
        await state.ping()
        monkeypatch.setattr(Connection, "send_packed_command", counted)
        claims, expected = batch("key-a", "key-b")
        results = await asyncio.gather(*(state.claim_unique(k, n, WINDOW) for k, n in claims))
        assert list(results) == expected
        replays = await asyncio.gather(*(state.claim_unique(k, n, WINDOW) for k, n in claims))
        assert not any(replays)
    finally:
        monkeypatch.undo()
        await state.close()
    assert 2 <= len(writes) < N // 2, len(writes)  # one SET per claim and round trip: 2 N


async def test_a_unique_batch_probes_its_own_nonces_not_every_expired_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: forgetting the batch's expired nonces looks each one up by its primary key. Ranging over
    the expiry index instead read every expired nonce of every key (Signature v2 leaves thousands a
    second until the purge): 0.12 of Ping for a v2 call, 0.19 with the lookups."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'keygate.db'}"
    kg = Keygate(Settings(data_dir=tmp_path, database_url=url, master_key=base64.b64encode(secrets.token_bytes(32)).decode()),
                 serving=False)
    await kg.start(bootstrap_admin=False)
    state = SqlState(kg.engine)
    claims, expected = batch("key-a", "key-b")
    traced: list[str] = []
    original = sqlite3.connect

    def traced_connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        db = original(*args, **kwargs)
        db.set_trace_callback(traced.append)
        return db

    monkeypatch.setattr(sqlite3, "connect", traced_connect)  # the direct connection is opened at the first batch
    assert list(await asyncio.gather(*(state.claim_unique(k, n, WINDOW) for k, n in claims))) == expected
    monkeypatch.undo()
    deletes = [s for s in traced if s.lstrip().upper().startswith("DELETE FROM USED_NONCES")]
    assert deletes, traced
    db = sqlite3.connect(tmp_path / "keygate.db")
    for statement in deletes:
        plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement))
        assert "ix_used_nonces_expires_at" not in plan and "(api_key=? AND nonce=?)" in plan, (statement, plan)
    db.close()
    await state.close()
    await kg.close()
