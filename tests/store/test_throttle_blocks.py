"""A block only ever grows until it ends or is reset: two failures counted at once each decide a
back-off, and the shorter one, written last, must not cut the longer one (or a lockout) short. That
race let a stranger's right password through while an attack was still being refused."""

from __future__ import annotations

import asyncio
import secrets

from keygate.service import Keygate
from keygate.store.redis_state import RedisState
from keygate.store.shared_state import SqlState
from support import REDIS_URL, need, redis_available


async def _check(state: SqlState | RedisState) -> None:
    scope = f"name:victim-{secrets.token_hex(4)}"
    await state.record_failure(scope, 900)
    await state.block(scope, 3600)  # a lockout
    await state.block(scope, 2)  # a back-off decided a moment earlier, written a moment later
    assert await state.blocked_for([scope]) > 3500
    await asyncio.gather(*(state.block(scope, s) for s in (1, 4, 8, 3600, 16)))  # concurrent, any order
    assert await state.blocked_for([scope]) > 3500
    other = f"pw:203.0.113.{secrets.randbelow(250)}-{secrets.token_hex(2)}"
    await state.block(other, 1)
    await state.block(other, 30)  # a longer one extends
    assert 25 < await state.blocked_for([other]) <= 30
    await state.reset(scope)  # an administrator's unlock still ends it at once
    assert await state.blocked_for([scope]) == 0


async def test_a_shorter_block_never_cuts_a_longer_one_in_the_database(kg: Keygate) -> None:
    await _check(SqlState(kg.engine))


async def test_a_shorter_block_never_cuts_a_longer_one_in_redis() -> None:
    need(redis_available(), "Redis at 127.0.0.1:6379")
    state = RedisState(REDIS_URL, namespace=f"kgblk{secrets.token_hex(4)}")
    try:
        await _check(state)
    finally:
        await state.purge()
        await state.close()
