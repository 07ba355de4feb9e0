"""Shared fast state: nonce and TOTP-step claims, failure counters, and trust marks.

Two implementations with one contract. ``SqlState`` keeps it in the database (the default);
``RedisState`` keeps it in Redis (``KEYGATE_REDIS_URL``), for many nodes. Every claim is a single
atomic operation, so two workers or two nodes that receive the same nonce at the same instant accept
it at most once.
"""

from __future__ import annotations

import heapq
import secrets
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import Table, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keygate.domain.replay import FAR_FUTURE_SECONDS, SPREAD_GAP, nonce_as_u64, sortable
from keygate.store.batcher import Batcher
from keygate.store.database import dialect_insert
from keygate.store.sqlite_tx import sqlite_time, write_transaction
from keygate.store.tables import api_keys, signature_nonces, throttle_counters, trust_marks, used_nonces, users
from keygate.store.window_leases import LeaseSight, SqliteLeaseStore, WindowLeases, claim_window, raise_to


class SharedState(Protocol):
    async def claim_increasing(self, api_key: str, nonce: int) -> bool:
        """Accept ``nonce`` only if it exceeds the last one accepted for the key, and remember it."""

    async def claim_unique(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        """Accept ``nonce`` only if the key has not used it within the window, and remember it."""

    async def claim_signature_nonce(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        """``claim_unique`` for Signature v2's nonces, kept apart from the key's APEX nonces: nothing a
        replay mode does to those (a ``window`` key forgetting its oldest) touches these."""

    async def claim_window(self, api_key: str, nonce: str, limit: int, window_seconds: int) -> bool:
        """The ``window`` mode (domain.replay): accept ``nonce`` only if the key does not remember it and,
        if numeric, it lies above the key's floor; remember it, within ``limit`` nonces."""

    def claim_window_now(self, api_key: str, nonce: str, limit: int) -> bool | None:
        """The ``window`` claim decided at once, without waiting (a lease held here), or ``None``:
        only ``claim_window`` can decide it. True accepts and records the nonce, as ``claim_window`` would."""

    async def end_window_lease(self, api_key: str) -> None:
        """Before the key's replay mode changes: no process decides its ``window`` claims in memory any
        more, and what one may have accepted there is covered (store/window_leases.py)."""

    async def forget_key(self, api_key: str) -> None:
        """The key was deleted: its replay state goes too (a ``window`` key's remembered nonces never
        expire). The database's is deleted with the key's row (``ApiKeyRepository.delete``); a lease
        held here is dropped unwritten."""

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


class WindowClaim(NamedTuple):
    api_key: str
    nonce: str
    limit: int
    window_seconds: int


class _KeyWindow:
    """One key's ``window`` state while a batch decides its claims: domain.replay's rules, in memory,
    over the key's row (locked), the batch's nonces it remembers, and the smallest nonces it may forget."""

    __slots__ = ("high", "floor", "spread", "count", "present", "oldest", "added", "forgotten")

    def __init__(self, high: str | None, floor: str | None, spread: bool, count: int) -> None:
        self.high, self.floor, self.spread, self.count = high, floor, spread, count
        self.present: set[str] = set()  # remembered, among the batch's nonces
        self.oldest: list[tuple[tuple[object, str], str, bool]] = []  # heap: (forgetting order, nonce, added by this batch)
        self.added: dict[str, datetime] = {}  # to insert: nonce -> expiry
        self.forgotten: list[str] = []  # stored rows to delete

    def order(self, nonce: str, expires: datetime) -> tuple[object, str]:
        """The order in which the key forgets (the same as the SQL ``ORDER BY`` of ``_window_one``)."""
        return (expires, nonce) if self.spread else (len(nonce), nonce)

    def decide(self, claims: list[tuple[int, WindowClaim]], now: datetime) -> tuple[set[int], list[int]]:
        """The indexes of the accepted claims, decided in order, and those left undecided: from the
        first that would make the key random-style on (once per key: the caller decides them one by one)."""
        accepted: set[int] = set()
        for position, (i, c) in enumerate(claims):
            value = nonce_as_u64(c.nonce)
            padded = sortable(value) if value is not None else None
            if padded is not None and self.floor is not None and padded <= self.floor:
                continue
            if c.nonce in self.present:
                continue
            if not self.spread and (value is None or (self.high is not None and int(self.high) - value > SPREAD_GAP)):
                return accepted, [j for j, _ in claims[position:]]
            expires = now + timedelta(seconds=c.window_seconds if self.spread else FAR_FUTURE_SECONDS, microseconds=i)
            self.present.add(c.nonce)
            self.added[c.nonce] = expires
            heapq.heappush(self.oldest, (self.order(c.nonce, expires), c.nonce, True))
            self.count += 1
            doomed: list[str] = []
            while self.count > c.limit and self.oldest:
                _, nonce, new = heapq.heappop(self.oldest)
                doomed.append(nonce)
                self.present.discard(nonce)
                self.count -= 1
                if new:
                    del self.added[nonce]
                else:
                    self.forgotten.append(nonce)
            if doomed and not self.spread:  # forgotten for good: the floor refuses them from now on
                values = [v for v in (nonce_as_u64(d) for d in doomed) if v is not None]
                if values and (self.floor is None or sortable(max(values)) > self.floor):
                    self.floor = sortable(max(values))
            if padded is not None and (self.high is None or padded > self.high):
                self.high = padded
            accepted.add(i)
        return accepted, []



def _sqlite_batch(db: sqlite3.Connection, claims: list[WindowClaim], now: datetime,
                  sight: LeaseSight | None = None) -> list[bool | None]:
    """``SqlState._windows_in``'s fast path in plain sqlite3, on the connection's thread: one result per
    claim, ``None`` for those left to decide one by one. Rolls back on any error.

    With ``sight`` (store/window_leases.py), in the same transaction: the claims of keys whose lease
    another process holds are left out (``sight.waiting``: they wait), expired leases are
    revoked (the key's floor rises to their ceiling before anything is decided), free keys that stay
    increasing-style are leased to this process (``sight.taken``), and a key turning random-style gets
    a shared mark, so that nobody leases it while its claims are decided one by one after."""
    by_key: dict[str, list[int]] = {}
    for i, c in enumerate(claims):
        by_key.setdefault(c.api_key, []).append(i)
    keys = list(by_key)
    marks = ",".join("?" * len(keys))
    results: list[bool | None] = [False] * len(claims)
    with write_transaction(db):
        states = {r[0]: _KeyWindow(r[1], r[2], bool(r[3]), int(r[4])) for r in db.execute(
            f"SELECT api_key, last_nonce, nonce_floor, nonce_spread, nonce_count FROM api_keys WHERE api_key IN ({marks})", keys)}
        if sight is not None:
            sight.read(db, keys)
            for key in sight.waiting:
                states.pop(key, None)
            for key, ceiling in sight.revoked.items():
                st = states.get(key)
                if st is not None and ceiling is not None:  # what the lapsed holder may have accepted: refused for good
                    st.floor, st.high = raise_to(st.floor, ceiling), raise_to(st.high, ceiling)
        nonces = list({c.nonce for c in claims})
        if states:
            for key, nonce in db.execute(
                    f"SELECT api_key, nonce FROM used_nonces WHERE api_key IN ({marks}) AND nonce IN ({','.join('?' * len(nonces))})",
                    keys + nonces):
                if key in states:
                    states[key].present.add(nonce)
        spread = [key for key, st in states.items() if st.spread]
        if spread:  # a random-style key forgets by age too
            for key, nonce in db.execute(f"DELETE FROM used_nonces WHERE api_key IN ({','.join('?' * len(spread))}) "
                                         "AND expires_at <= ? RETURNING api_key, nonce", [*spread, sqlite_time(now)]).fetchall():
                states[key].count -= 1
                states[key].present.discard(nonce)
            for key in spread:
                states[key].count = max(0, states[key].count)
        inserts: list[tuple[str, str, str]] = []
        deletes: list[tuple[str, str]] = []
        updates: list[tuple[str | None, str | None, bool, int, str]] = []
        for key, idxs in by_key.items():
            if sight is not None and key in sight.waiting:
                for i in idxs:
                    results[i] = None
                continue
            st = states.get(key)
            if st is None:
                continue  # no such key: refused
            overflow = st.count + len(idxs) - min(claims[i].limit for i in idxs)
            if overflow > 0:  # the smallest remembered nonces this batch may have to forget
                order = "expires_at, nonce" if st.spread else "length(nonce), nonce"
                for nonce, expires in db.execute(
                        f"SELECT nonce, expires_at FROM used_nonces WHERE api_key = ? ORDER BY {order} LIMIT ?", (key, overflow)):
                    when = datetime.fromisoformat(expires).replace(tzinfo=timezone.utc)
                    heapq.heappush(st.oldest, (st.order(nonce, when), nonce, False))
            decided, undecided = st.decide([(i, claims[i]) for i in idxs], now)
            for i in idxs:
                results[i] = i in decided
            for i in undecided:
                results[i] = None
            if sight is not None:
                if undecided or st.spread:
                    sight.to_share.add(key)
                else:
                    sight.take(key, st.high)
            inserts.extend((key, n, sqlite_time(e)) for n, e in st.added.items())
            deletes.extend((key, n) for n in st.forgotten)
            updates.append((st.high, st.floor, st.spread, st.count, key))
        if deletes:
            db.executemany("DELETE FROM used_nonces WHERE api_key = ? AND nonce = ?", deletes)
        if inserts:
            db.executemany("INSERT INTO used_nonces (api_key, nonce, expires_at) VALUES (?, ?, ?)", inserts)
        if updates:
            db.executemany("UPDATE api_keys SET last_nonce = ?, nonce_floor = ?, nonce_spread = ?, nonce_count = ? "
                           "WHERE api_key = ?", updates)
        if sight is not None:
            sight.write(db)
    return results


def _sqlite_batch_or_undecided(db: sqlite3.Connection, claims: list[WindowClaim], now: datetime,
                               sight: LeaseSight | None = None) -> list[bool | None]:
    """``_sqlite_batch``; every claim undecided (``None``, decided one by one after) when a nonce was
    written meanwhile outside the lock (a key's mode changing). With leases, nothing is decided one
    by one beside a lease: the batch is void (``sight.void``) and its claims are tried again."""
    try:
        return _sqlite_batch(db, claims, now, sight)
    except sqlite3.IntegrityError:
        if sight is not None:
            sight.void = True
        return [None] * len(claims)


def _first_expiries(claims: list[tuple[str, str, int]], now: datetime) -> dict[tuple[str, str], datetime]:
    """Each distinct (key, nonce) of a ``unique`` batch, with the expiry its first claim asks for."""
    rows: dict[tuple[str, str], datetime] = {}
    for api_key, nonce, window in claims:
        rows.setdefault((api_key, nonce), now + timedelta(seconds=window))
    return rows


def _sqlite_uniques(db: sqlite3.Connection, claims: list[tuple[str, str, int]], now: datetime,
                    table: str = "used_nonces") -> set[tuple[str, str]]:
    """``SqlState._decide_uniques`` in plain sqlite3: forget the batch's nonces whose window has passed,
    insert every distinct (key, nonce), and return those this batch inserted. Rolls back on any error."""
    rows = {pair: sqlite_time(expires) for pair, expires in _first_expiries(claims, now).items()}
    with write_transaction(db):
        # One primary-key probe per pair: a row-value IN beside the expiry makes SQLite range over every
        # expired row instead (those of other nonces pile up until the purge).
        db.executemany(f"DELETE FROM {table} WHERE api_key = ? AND nonce = ? AND expires_at <= ?",
                       [(key, nonce, sqlite_time(now)) for key, nonce in rows])
        inserted = {(r[0], r[1]) for r in db.execute(
            f"INSERT INTO {table} (api_key, nonce, expires_at) VALUES " + ",".join("(?, ?, ?)" for _ in rows)
            + " ON CONFLICT DO NOTHING RETURNING api_key, nonce",
            [v for (key, nonce), expires in rows.items() for v in (key, nonce, expires)]).fetchall()}
    return inserted


class _DirectSqlite:
    """A plain sqlite3 connection of the event loop's own thread, for the nonce batches (SQLite only).

    Why: through the pool, a batch of 8 claims took 1.3 ms, most of it spent handing work to
    aiosqlite's thread and back (check-out, the batch, the reset on check-in) while requests waited;
    in the loop's thread the same statements take a tenth of that. It never waits for a lock: its
    busy timeout is 0, so when another connection or process holds SQLite's write lock ``BEGIN
    IMMEDIATE`` fails at once and the caller takes the pooled path, which waits as every write does.
    It never checkpoints (``wal_autocheckpoint=0``): the pooled connections' commits, in their own
    threads, do (the key-usage and audit flushes commit every second), so the loop never waits on an
    fsync. Atomicity and durability are SQLite's, as on the pooled path: a claim is answered after its
    ``COMMIT``, and the write lock serialises it with every other process's claims."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    def run(self, work: Any) -> Any:
        """``work(db)``, or ``_BUSY`` when the write lock is taken (nothing was written)."""
        if self._db is None:
            self._db = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute("PRAGMA synchronous=NORMAL")  # as the pooled connections (store/database.py)
        try:
            return work(self._db)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            if not ("locked" in str(exc) or "busy" in str(exc)):
                self.close()  # anything else: reopen next time; the pooled path meets the error and reports it
            return _BUSY

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            try:
                db.close()
            except sqlite3.Error:
                pass


_BUSY = object()


def _sqlite_file(engine: AsyncEngine) -> str | None:
    """The database file of an SQLite engine (``None``: another database, or one in memory)."""
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    return path if path and path != ":memory:" and not path.startswith("file:") else None


class SqlState:
    """``window`` claims go through a ``Batcher`` (store/batcher.py): at most ``MAX_BATCH`` claims per
    transaction, each waiting at most for the transaction in flight plus its own; a claim is answered
    after its transaction commits."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # A ``window`` claim's batch answers None for "wait for the key's lease elsewhere, then again".
        self._windows: Batcher[WindowClaim, bool | None] = Batcher(self._decide_windows)
        self._uniques: Batcher[tuple[str, str, int], bool] = Batcher(self._decide_uniques)
        self._signature_nonces: Batcher[tuple[str, str, int], bool] = Batcher(self._decide_signature_nonces)
        path = _sqlite_file(engine)
        self._direct = _DirectSqlite(path) if path else None
        # SQLite files: ``window`` claims of a key this process holds the lease of are decided in memory.
        self.leases = WindowLeases(SqliteLeaseStore(self._sqlite_run), secrets.token_hex(8)) if path else None

    async def _sqlite_run(self, work: Any) -> Any:
        """``work(db)`` in one go on the direct connection, or, when the write lock is taken, on a pooled
        one in aiosqlite's thread (which waits for the lock, as every write does)."""
        result = self._direct.run(work) if self._direct else _BUSY
        if result is _BUSY:
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                aio: Any = raw.driver_connection
                result = await aio._execute(lambda: work(aio._conn))
        return result

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
        """Decided by a batcher like ``window`` claims: the claims that arrive while one batch is in
        flight are decided together, in one transaction (``_decide_uniques``)."""
        claimed = await self._uniques.submit((api_key, nonce, window_seconds))
        value = nonce_as_u64(nonce)
        if claimed and value is not None:  # every strict mode keeps the highest: a switch to ``increasing`` refuses these
            await self.raise_highest_nonce(api_key, value)
        return claimed

    async def claim_signature_nonce(self, api_key: str, nonce: str, window_seconds: int) -> bool:
        """Like ``claim_unique``, in ``signature_nonces`` (store/tables.py says why apart)."""
        return await self._signature_nonces.submit((api_key, nonce, window_seconds))

    async def _decide_uniques(self, claims: list[tuple[str, str, int]]) -> list[bool]:
        return await self._decide_once(claims, used_nonces)

    async def _decide_signature_nonces(self, claims: list[tuple[str, str, int]]) -> list[bool]:
        return await self._decide_once(claims, signature_nonces)

    async def _decide_once(self, claims: list[tuple[str, str, int]], table: Table) -> list[bool]:
        """One transaction: forget the batch's nonces whose window has passed, insert every distinct
        (key, nonce) with ``ON CONFLICT DO NOTHING ... RETURNING``, and accept a claim if and only if its
        row was inserted by this batch and no earlier claim of the batch took it. The primary key
        decides between processes: two batches inserting one nonce at once accept it once."""
        now = _now()
        direct = self._direct.run(lambda db: _sqlite_uniques(db, claims, now, table.name)) if self._direct else _BUSY
        if direct is _BUSY:
            inserted = await self._insert_uniques(claims, now, table)
        else:
            inserted = cast("set[tuple[str, str]]", direct)
        results: list[bool] = []
        for api_key, nonce, _ in claims:
            ok = (api_key, nonce) in inserted
            if ok:
                inserted.discard((api_key, nonce))  # a repeat within the batch is a replay
            results.append(ok)
        return results

    async def _insert_uniques(self, claims: list[tuple[str, str, int]], now: datetime, table: Table) -> set[tuple[str, str]]:
        u = table.c
        rows = {(key, nonce): {"api_key": key, "nonce": nonce, "expires_at": expires}
                for (key, nonce), expires in _first_expiries(claims, now).items()}
        async with self._engine.begin() as conn:
            await conn.execute(delete(table).where(u.api_key == bindparam("b_key"), u.nonce == bindparam("b_nonce"),
                                                   u.expires_at <= now),
                               [{"b_key": key, "b_nonce": nonce} for key, nonce in rows])  # primary-key probes
            statement = dialect_insert(conn.dialect.name)(table).values(list(rows.values())).on_conflict_do_nothing().returning(u.api_key, u.nonce)
            return {(r[0], r[1]) for r in (await conn.execute(statement)).all()}

    def claim_window_now(self, api_key: str, nonce: str, limit: int) -> bool | None:
        return self.leases.decide_now(api_key, nonce, limit) if self.leases is not None else None

    async def claim_window(self, api_key: str, nonce: str, limit: int, window_seconds: int) -> bool:
        """Decided in memory if this process holds the key's lease (store/window_leases.py), else by
        the batcher: every claim that arrives while a batch is in flight joins the next. A claim of a
        key leased elsewhere waits for the hand-over, then tries again (a few times, then it is refused)."""
        claim = WindowClaim(api_key, nonce, limit, window_seconds)
        if self.leases is not None:
            return await claim_window(self.leases, claim, self._windows.submit)
        return bool(await self._windows.submit(claim))

    async def end_window_lease(self, api_key: str) -> None:
        """The key's lease ends everywhere (its replay mode changes): see ``WindowLeases.revoke``."""
        if self.leases is not None:
            await self.leases.revoke(api_key)

    async def _decide_windows(self, claims: list[WindowClaim]) -> list[bool | None]:
        """One transaction for the whole batch, holding the rows of all its keys (locked in key order,
        so two processes' batches are serialised key by key and cannot deadlock). Claims of one key
        are decided in arrival order, exactly as one after the other; a refused claim refuses only itself."""
        now = _now()
        if self._engine.dialect.name == "sqlite":
            return await self._sqlite_windows(claims, now)
        try:
            async with self._engine.begin() as conn:
                return await self._windows_in(conn, claims, now, fast=True)
        except IntegrityError:  # a nonce written meanwhile outside the lock (a key's mode changing): one by one
            async with self._engine.begin() as conn:
                return await self._windows_in(conn, claims, now, fast=False)

    async def _windows_in(self, conn: AsyncConnection, claims: list[WindowClaim], now: datetime, fast: bool) -> list[bool | None]:
        k, u = api_keys.c, used_nonces.c
        by_key: dict[str, list[int]] = {}
        for i, c in enumerate(claims):
            by_key.setdefault(c.api_key, []).append(i)
        keys = sorted(by_key)
        columns = (k.api_key, k.last_nonce, k.nonce_floor, k.nonce_spread, k.nonce_count)
        if conn.dialect.name == "postgresql":
            rows = (await conn.execute(select(*columns).where(k.api_key.in_(keys)).order_by(k.api_key).with_for_update())).all()
        else:  # take SQLite's write lock before reading, so no other process writes between
            await conn.execute(update(api_keys).where(k.api_key.in_(keys)).values(nonce_count=k.nonce_count))
            rows = (await conn.execute(select(*columns).where(k.api_key.in_(keys)))).all()
        results: list[bool | None] = [False] * len(claims)
        if not fast:
            for i, c in enumerate(claims):
                results[i] = await self._window_one(conn, c, now + timedelta(microseconds=i))
            return results
        states = {r[0]: _KeyWindow(r[1], r[2], bool(r[3]), int(r[4])) for r in rows}
        # Which of the batch's nonces each key remembers (one read for the batch).
        if states:
            for key, nonce in await conn.execute(select(u.api_key, u.nonce).where(
                    u.api_key.in_(list(states)), u.nonce.in_(list({c.nonce for c in claims})))):
                if key in states:
                    states[key].present.add(nonce)
        spread = [key for key, st in states.items() if st.spread]
        if spread:  # a random-style key forgets by age too
            aged = await conn.execute(delete(used_nonces).where(u.api_key.in_(spread), u.expires_at <= now).returning(u.api_key, u.nonce))
            for key, nonce in aged:
                states[key].count -= 1
                states[key].present.discard(nonce)
            for key in spread:
                states[key].count = max(0, states[key].count)
        inserts: list[dict[str, object]] = []
        deletes: list[dict[str, object]] = []
        updates: list[dict[str, object]] = []
        slow: list[int] = []
        for key, idxs in by_key.items():
            st = states.get(key)
            if st is None:
                continue  # no such key: refused
            overflow = st.count + len(idxs) - min(claims[i].limit for i in idxs)
            if overflow > 0:  # the smallest remembered nonces this batch may have to forget
                order = (u.expires_at, u.nonce) if st.spread else (func.length(u.nonce), u.nonce)
                for nonce, expires in await conn.execute(
                        select(u.nonce, u.expires_at).where(u.api_key == key).order_by(*order).limit(overflow)):
                    heapq.heappush(st.oldest, (st.order(nonce, expires), nonce, False))
            decided, undecided = st.decide([(i, claims[i]) for i in idxs], now)
            for i in idxs:
                results[i] = i in decided
            slow.extend(undecided)  # the key turns random-style in this batch: from there on one by one, below
            inserts.extend({"api_key": key, "nonce": n, "expires_at": e} for n, e in st.added.items())
            deletes.extend({"b_key": key, "b_nonce": n} for n in st.forgotten)
            updates.append({"b_key": key, "b_high": st.high, "b_floor": st.floor, "b_spread": st.spread, "b_count": st.count})
        if deletes:
            await conn.execute(delete(used_nonces).where(u.api_key == bindparam("b_key"), u.nonce == bindparam("b_nonce")), deletes)
        if inserts:
            await conn.execute(insert(used_nonces), inserts)
        if updates:
            await conn.execute(update(api_keys).where(k.api_key == bindparam("b_key")).values(
                last_nonce=bindparam("b_high"), nonce_floor=bindparam("b_floor"), nonce_spread=bindparam("b_spread"),
                nonce_count=bindparam("b_count")), updates)
        for i in slow:
            results[i] = await self._window_one(conn, claims[i], now + timedelta(microseconds=i))
        return results

    async def _sqlite_windows(self, claims: list[WindowClaim], now: datetime) -> list[bool | None]:
        """SQLite: the whole batch in one call, a handful of statements in C under ``BEGIN IMMEDIATE``
        (the file's write lock: other processes wait), then ``COMMIT``: on the loop's own connection
        (``_DirectSqlite``), or on a pooled one when the lock is taken; the claims left undecided (a key
        turning random-style) follow one by one. With leases: keys leased here are loaded into memory,
        and the claims of keys leased elsewhere (or of a void batch) answer None: wait, then again."""
        started = time.monotonic()
        sights: list[LeaseSight | None] = [None]

        def batch(db: sqlite3.Connection) -> list[bool | None]:
            # A fresh sight for each attempt: a direct attempt that found the lock taken is tried again pooled.
            sights[0] = sight = self.leases.sight(time.time()) if self.leases is not None else None
            return _sqlite_batch_or_undecided(db, claims, now, sight)

        decided: list[bool | None] = await self._sqlite_run(batch)
        sight = sights[0]
        if sight is not None:
            if sight.void:
                return [None] * len(claims)
            if sight.taken:
                await self.leases.install(sight.taken, started)  # type: ignore[union-attr]
            waiting = {i for i, c in enumerate(claims) if c.api_key in sight.waiting}
        else:
            waiting = set()
        rest = [i for i, d in enumerate(decided) if d is None and i not in waiting]
        if rest:
            async with self._engine.begin() as conn:
                late = await self._windows_in(conn, [claims[i] for i in rest], now, fast=False)
            for i, d in zip(rest, late, strict=True):
                decided[i] = d
        return [None if i in waiting else bool(d) for i, d in enumerate(decided)]

    @staticmethod
    async def _window_one(conn: AsyncConnection, claim: WindowClaim, now: datetime) -> bool:
        """One claim, statement by statement, inside the batch's transaction (its key's row is locked)."""
        api_key, nonce, limit, window_seconds = claim
        value = nonce_as_u64(nonce)
        padded = sortable(value) if value is not None else None
        k = api_keys.c
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

    async def forget_key(self, api_key: str) -> None:
        if self.leases is not None:
            self.leases.forget(api_key)

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
        """Extend only: two failures counted at once each decide a back-off, and the shorter one, written
        last, must not cut the longer one (or a lockout) short."""
        now = _now()
        until = now + timedelta(seconds=seconds)
        c = throttle_counters.c
        extended = case((c.blocked_until.is_not(None) & (c.blocked_until > until), c.blocked_until), else_=until)
        async with self._engine.begin() as conn:
            done = await conn.execute(update(throttle_counters).where(c.scope == scope).values(blocked_until=extended))
            if done.rowcount == 0:  # a lock right after a reset: the block stands without a count
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(throttle_counters).values(scope=scope, failures=0, window_ends_at=now, blocked_until=until))
                except IntegrityError:
                    await conn.execute(update(throttle_counters).where(c.scope == scope).values(blocked_until=extended))

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
            await conn.execute(delete(signature_nonces).where(signature_nonces.c.expires_at <= now))
            await conn.execute(
                delete(throttle_counters).where(
                    throttle_counters.c.window_ends_at <= now,
                    or_(throttle_counters.c.blocked_until.is_(None), throttle_counters.c.blocked_until <= now),
                )
            )

    async def close(self) -> None:
        if self.leases is not None:
            await self.leases.close()
        if self._direct is not None:
            self._direct.close()
