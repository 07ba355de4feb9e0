"""Shared fast state: nonce and TOTP-step claims, failure counters, and trust marks.

Two implementations with one contract. ``SqlState`` keeps it in the database (the default);
``RedisState`` keeps it in Redis (``KEYGATE_REDIS_URL``), for many nodes. Every claim is a single
atomic operation, so two workers or two nodes that receive the same nonce at the same instant accept
it at most once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from keygate.domain.replay import FAR_FUTURE_SECONDS, SPREAD_GAP, nonce_as_u64, sortable
from keygate.store.tables import api_keys, throttle_counters, trust_marks, used_nonces, users


class SharedState(Protocol):
    async def claim_increasing(self, api_key: str, nonce: int) -> bool:
        """Accept ``nonce`` only if it exceeds the last one accepted for the key, and remember it."""

    async def claim_unique(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        """Accept ``nonce`` only if the key has not used it within the window, and remember it."""

    async def claim_window(self, api_key: str, nonce: str, limit: int, window_seconds: int) -> bool:
        """The ``window`` mode (domain.replay): accept ``nonce`` only if the key does not remember it and,
        if numeric, it lies above the key's floor; remember it, within ``limit`` nonces."""

    async def highest_nonce(self, api_key: str) -> int | None:
        """The highest numeric nonce the key accepted in any mode (None: none yet)."""

    async def raise_highest_nonce(self, api_key: str, nonce: int) -> None:
        """Make ``nonce`` the key's highest numeric nonce unless a higher one is recorded."""

    async def record_failure(self, scope: str, window_seconds: int) -> int:
        """Count one failure in the scope's window; return the count in the window."""

    async def block(self, scope: str, seconds: float) -> None:
        """Refuse the scope for ``seconds``."""

    async def blocked_for(self, scopes: list[str]) -> float:
        """Seconds until every one of ``scopes`` is free again (0 if none is blocked)."""

    async def reset(self, scope: str) -> None:
        """Forget the scope's failures and block (after a success, or an administrator's unlock)."""

    async def claim_totp_step(self, user_id: int, step: int) -> bool:
        """Accept TOTP time step ``step`` only if it is later than the last one the user signed in with."""

    async def mark(self, name: str, seconds: int) -> None:
        """Remember ``name`` (a trusted source) for ``seconds``."""

    async def is_marked(self, name: str) -> bool:
        """Whether ``name`` was marked and has not expired."""

    async def purge(self) -> None:
        """Drop expired entries (the database needs this; Redis expires keys by itself)."""

    async def close(self) -> None: ...


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SqlState:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim_increasing(self, api_key: str, nonce: int) -> bool:
        value = sortable(nonce)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.api_key == api_key)
                .where(or_(api_keys.c.last_nonce.is_(None), api_keys.c.last_nonce < value))
                .values(last_nonce=value)
            )
        return result.rowcount == 1

    async def claim_unique(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        now = _now()
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(used_nonces).where(
                    and_(used_nonces.c.api_key == api_key, used_nonces.c.nonce == nonce, used_nonces.c.expires_at <= now)
                )
            )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(used_nonces).values(api_key=api_key, nonce=nonce, expires_at=now + timedelta(seconds=window_seconds))
                )
        except IntegrityError:
            return False
        value = nonce_as_u64(nonce)
        if value is not None:  # every strict mode keeps the highest: a switch to ``increasing`` refuses these
            await self.raise_highest_nonce(api_key, value)
        return True

    async def claim_window(self, api_key: str, nonce: str, limit: int, window_seconds: int) -> bool:
        """One transaction, holding the key's row: two processes claiming at once are serialised."""
        now = _now()
        value = nonce_as_u64(nonce)
        padded = sortable(value) if value is not None else None
        k = api_keys.c
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                lock = select(k.last_nonce, k.nonce_floor, k.nonce_spread, k.nonce_count).where(k.api_key == api_key).with_for_update()
                row = (await conn.execute(lock)).first()
            else:  # take SQLite's write lock before reading, so no other process writes between
                await conn.execute(update(api_keys).where(k.api_key == api_key).values(nonce_count=k.nonce_count))
                row = (await conn.execute(select(k.last_nonce, k.nonce_floor, k.nonce_spread, k.nonce_count).where(k.api_key == api_key))).first()
            if row is None:
                return False
            high, floor, spread, count = row[0], row[1], bool(row[2]), int(row[3])
            u = used_nonces.c
            if spread:  # a random-style key forgets by age too
                aged = await conn.execute(delete(used_nonces).where(u.api_key == api_key, u.expires_at <= now))
                count = max(0, count - aged.rowcount)
            if padded is not None and floor is not None and padded <= floor:
                return False
            if not spread and (padded is None or (high is not None and int(high) - value > SPREAD_GAP)):  # type: ignore[operator]
                spread = True
            expires = now + timedelta(seconds=window_seconds if spread else FAR_FUTURE_SECONDS)
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(used_nonces).values(api_key=api_key, nonce=nonce, expires_at=expires))
            except IntegrityError:
                return False
            count += 1
            if count > limit:
                order = (u.expires_at, u.nonce) if spread else (func.length(u.nonce), u.nonce)
                doomed = [r[0] for r in (await conn.execute(
                    select(u.nonce).where(u.api_key == api_key).order_by(*order).limit(count - limit))).all()]
                await conn.execute(delete(used_nonces).where(u.api_key == api_key, u.nonce.in_(doomed)))
                count -= len(doomed)
                if not spread:  # forgotten for good: the floor refuses them from now on
                    values = [v for v in (nonce_as_u64(d) for d in doomed) if v is not None]
                    if values and (floor is None or sortable(max(values)) > floor):
                        floor = sortable(max(values))
            if padded is not None and (high is None or padded > high):
                high = padded
            await conn.execute(update(api_keys).where(k.api_key == api_key)
                               .values(last_nonce=high, nonce_floor=floor, nonce_spread=spread, nonce_count=count))
        return True

    async def highest_nonce(self, api_key: str) -> int | None:
        async with self._engine.connect() as conn:
            value = (await conn.execute(select(api_keys.c.last_nonce).where(api_keys.c.api_key == api_key))).scalar()
        return int(value) if value is not None else None

    async def raise_highest_nonce(self, api_key: str, nonce: int) -> None:
        await self.claim_increasing(api_key, nonce)  # the same conditional raise; here a lower nonce is no refusal

    async def record_failure(self, scope: str, window_seconds: int) -> int:
        now = _now()
        ends = now + timedelta(seconds=window_seconds)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(throttle_counters)
                .where(throttle_counters.c.scope == scope, throttle_counters.c.window_ends_at > now)
                .values(failures=throttle_counters.c.failures + 1)
            )
            if result.rowcount == 0:
                fresh = await conn.execute(
                    update(throttle_counters).where(throttle_counters.c.scope == scope).values(failures=1, window_ends_at=ends)
                )
                if fresh.rowcount == 0:
                    try:
                        async with conn.begin_nested():
                            await conn.execute(insert(throttle_counters).values(scope=scope, failures=1, window_ends_at=ends))
                    except IntegrityError:
                        await conn.execute(
                            update(throttle_counters).where(throttle_counters.c.scope == scope)
                            .values(failures=throttle_counters.c.failures + 1)
                        )
            count = (await conn.execute(select(throttle_counters.c.failures).where(throttle_counters.c.scope == scope))).scalar_one()
        return int(count)

    async def block(self, scope: str, seconds: float) -> None:
        now = _now()
        until = now + timedelta(seconds=seconds)
        async with self._engine.begin() as conn:
            done = await conn.execute(
                update(throttle_counters).where(throttle_counters.c.scope == scope).values(blocked_until=until)
            )
            if done.rowcount == 0:  # a lock right after a reset: the block stands without a count
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(throttle_counters).values(scope=scope, failures=0, window_ends_at=now, blocked_until=until))
                except IntegrityError:
                    await conn.execute(update(throttle_counters).where(throttle_counters.c.scope == scope).values(blocked_until=until))

    async def blocked_for(self, scopes: list[str]) -> float:
        if not scopes:
            return 0.0
        now = _now()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(throttle_counters.c.blocked_until).where(
                        throttle_counters.c.scope.in_(scopes), throttle_counters.c.blocked_until > now
                    )
                )
            ).all()
        return max(((r[0] - now).total_seconds() for r in rows), default=0.0)

    async def reset(self, scope: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(throttle_counters).where(throttle_counters.c.scope == scope))

    async def claim_totp_step(self, user_id: int, step: int) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(users)
                .where(users.c.user_id == user_id)
                .where(or_(users.c.last_totp_step.is_(None), users.c.last_totp_step < step))
                .values(last_totp_step=step)
            )
        return result.rowcount == 1

    async def mark(self, name: str, seconds: int) -> None:
        expires = _now() + timedelta(seconds=seconds)
        async with self._engine.begin() as conn:
            done = await conn.execute(update(trust_marks).where(trust_marks.c.mark == name).values(expires_at=expires))
            if done.rowcount == 0:
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(trust_marks).values(mark=name, expires_at=expires))
                except IntegrityError:
                    pass  # marked at the same instant by another worker

    async def is_marked(self, name: str) -> bool:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(trust_marks.c.expires_at).where(trust_marks.c.mark == name, trust_marks.c.expires_at > _now())
            )).first()
        return row is not None

    async def purge(self) -> None:
        now = _now()
        async with self._engine.begin() as conn:
            await conn.execute(delete(trust_marks).where(trust_marks.c.expires_at <= now))
            await conn.execute(delete(used_nonces).where(used_nonces.c.expires_at <= now))
            await conn.execute(
                delete(throttle_counters).where(
                    throttle_counters.c.window_ends_at <= now,
                    or_(throttle_counters.c.blocked_until.is_(None), throttle_counters.c.blocked_until <= now),
                )
            )

    async def close(self) -> None:
        return None
