"""``window`` claims decided in memory on SQLite: one lease per key, and a reserved ceiling.

Why: decided by the database, a claim costs its share of a write transaction (reading the key's
row and its remembered nonces, inserting the nonce, forgetting the smallest one, four indexes each,
``COMMIT``): about 45 us of the server's CPU, against about 15 us for the whole rest of a signed
call. A process that holds a key's lease decides the key's claims in memory, with the very rules of
the database path (``shared_state._KeyWindow``, domain.replay), and writes nothing per claim.

Rules, each of which keeps a promise of the ``window`` mode (docs/security.md, "Replay protection"):

1. **One decider.** A row of ``nonce_leases`` (key, holder, until, ceiling) names the one process
   that may decide the key's claims in memory, until ``until``. Another process's claim for that
   key is never decided beside it: it marks the row *contended* and waits. The holder sees the mark
   at its next renewal (every ``RENEW_SECONDS``), writes the key's exact window (what the database
   path would have written claim by claim), and leaves a *shared* mark (holder ``''``): for
   ``SHARED_SECONDS`` nobody takes the lease and every process's claims are decided by the
   database, one transaction per batch, as without leases. A key used through several processes
   at once therefore pays one hand-over of at most ``RENEW_SECONDS``, then the database's price.
2. **A reserved ceiling.** The holder accepts in memory only numeric nonces at or below the
   lease's ``ceiling``, committed before. A claim above it waits for a new ceiling: the nonce plus
   about ``RESERVE_SECONDS`` of the key's recent nonce growth (at least ``MIN_MARGIN``), one small
   write a second or so for a key in steady use.
3. **A crash accepts no replay.** Killed, the holder leaves its row, and none of what it accepted
   since the lease began is written; but every such nonce is at or below the ceiling. A lease whose
   ``until`` has passed is *revoked* by the next claim of any process (the restarted one included):
   in the claim's transaction the key's floor and highest nonce rise to the ceiling, so every nonce
   the dead holder may have accepted is refused for good. The price: after a crash a client's
   nonces up to the ceiling (about ``RESERVE_SECONDS`` of them; a restart takes longer) are refused.
4. **Time.** The holder stops deciding ``LEASE_MARGIN`` before ``until``, counted on its monotonic
   clock from the start of its last renewal; another process revokes only once ``until`` has passed
   on its own wall clock. The processes of one SQLite file run on one machine, one clock.
5. **A lease not renewed is not used.** A renewal that finds the row gone or no longer this
   process's (an operator's change of the key's mode revokes it, ``revoke``; a deleted key's lease
   is dropped) drops the window from memory without writing it; the revocation's floor covers it.
6. **Leaving.** A key that turns random-style, goes unused for ``IDLE_SECONDS``, or is beyond
   ``MAX_HELD`` keys, and every key at shutdown, is handed back with its exact window.

Bound: at most ``MAX_HELD`` keys held, each at most ``KEYGATE_NONCE_WINDOW_SIZE`` nonces (as in the
database); entries leave after ``IDLE_SECONDS`` unused. SQLite files (``SqlState`` with its direct
connection) and Redis (``RedisState``, store/redis_leases.py: the same rules, the lease a Redis key
that expires by itself) use leases; with PostgreSQL alone every claim is the database's.

``WindowLeases`` holds the rules; a ``LeaseStore`` (``SqliteLeaseStore`` here, ``RedisLeaseStore``)
writes and reads the lease rows where the key's window lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from keygate.domain.replay import FAR_FUTURE_SECONDS, SPREAD_GAP, U64_MAX, nonce_as_u64, sortable
from keygate.store.sqlite_tx import in_transaction, sqlite_time

if TYPE_CHECKING:
    from keygate.store.shared_state import WindowClaim

log = logging.getLogger("keygate.leases")

LEASE_SECONDS = 2.0  # a lease's length, from the start of the renewal that wrote it
LEASE_MARGIN = 0.5  # the holder stops deciding this long before its lease ends
RENEW_SECONDS = 0.25  # how often the holder renews its leases and looks for contended ones
SHARED_SECONDS = 30.0  # after a hand-over, every process's claims of the key go to the database this long
IDLE_SECONDS = 60.0  # a key unused this long is handed back
MAX_HELD = 1000  # keys held at most; beyond, claims go to the database
MIN_MARGIN = 1000  # the least a ceiling is raised above the nonce that needed it
RESERVE_SECONDS = 1.0  # a new ceiling covers about this long of the key's nonce growth
HANDOVER_WAIT_SECONDS = LEASE_SECONDS + 1.0  # the most a claim waits for another process's hand-over
_POLL_SECONDS = 0.02

Runner = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


def _far_future_from(now: datetime) -> str:
    """Stored expiries above this are increasing-style entries (never forgotten by age), not the
    Signature v2 nonces of the same key (seconds) nor random-style ones (a day)."""
    return sqlite_time(now + timedelta(seconds=FAR_FUTURE_SECONDS // 2))


class LeaseSight:
    """What one database batch (``shared_state._sqlite_batch``) learns of, and does to, the leases
    of its keys, inside its transaction: keys another process holds (their claims wait), leases to
    revoke (expired) or take (free keys, increasing-style), shared marks to leave."""

    def __init__(self, holder: str, now: float, may_take: Callable[[str], bool], held_here: Callable[[str], bool]) -> None:
        self.holder = holder
        self.now = now
        self.may_take = may_take
        self.held_here = held_here
        # Keys whose claims this batch leaves to their lease, to be tried again: another process's
        # (they wait for its hand-over), or this process's own, taken while they queued (memory decides).
        self.waiting: set[str] = set()
        self.shared: set[str] = set()  # a live shared mark: decided here, no lease taken
        self.revoked: dict[str, str | None] = {}  # key -> the ceiling its floor rises to
        self.taken: dict[str, str] = {}  # key -> the ceiling of the lease taken
        self.to_share: set[str] = set()  # keys turning random-style: a shared mark, no lease
        self.void = False  # the transaction was rolled back: nothing of the above happened

    def read(self, db: sqlite3.Connection, keys: list[str]) -> None:
        marks = ",".join("?" * len(keys))
        contended: list[tuple[str]] = []
        for key, holder, until, ceiling in db.execute(
                f"SELECT api_key, holder, until, ceiling FROM nonce_leases WHERE api_key IN ({marks})", keys).fetchall():
            if until <= self.now:  # an expired lease is revoked; an old shared mark just removed
                self.revoked[key] = ceiling if holder != "" else None
            elif holder == "":
                self.shared.add(key)
            elif holder != self.holder:
                self.waiting.add(key)
                contended.append((key,))
            elif self.held_here(key):  # leased here while these claims queued: decided in memory
                self.waiting.add(key)
            else:  # this process's own row, but not held in memory (it lapsed here): revoke it
                self.revoked[key] = ceiling
        if contended:
            db.executemany("UPDATE nonce_leases SET contended = 1 WHERE api_key = ?", contended)

    def take(self, key: str, high: str | None) -> None:
        """The batch decided the key's claims and the key stays increasing-style: lease it."""
        if key in self.shared or key in self.to_share or not self.may_take(key):
            return
        top = int(high) if high is not None else 0
        self.taken[key] = sortable(min(top + MIN_MARGIN, U64_MAX))

    def write(self, db: sqlite3.Connection) -> None:
        if self.revoked:
            db.executemany("DELETE FROM nonce_leases WHERE api_key = ?", [(k,) for k in self.revoked])
        for key in self.to_share - self.waiting:
            share(db, key, self.now)
        for key, ceiling in self.taken.items():
            db.execute("INSERT INTO nonce_leases (api_key, holder, until, ceiling, contended) VALUES (?, ?, ?, ?, 0) "
                       "ON CONFLICT (api_key) DO UPDATE SET holder = excluded.holder, until = excluded.until, "
                       "ceiling = excluded.ceiling, contended = 0", (key, self.holder, self.now + LEASE_SECONDS, ceiling))


def raise_to(value: str | None, ceiling: str | None) -> str | None:
    """``max`` of two sortable nonces, either may be missing."""
    if ceiling is None:
        return value
    return ceiling if value is None or ceiling > value else value


class HeldWindow:
    """An increasing-style key's window in memory: domain.replay's rules exactly as
    ``shared_state._KeyWindow`` applies them (the same order of checks, the same forgetting order: by
    length, then text), on integers, with every remembered nonce at hand. What changed since it was
    loaded (``added``, ``forgotten``) is what handing it back writes."""

    __slots__ = ("high", "floor", "count", "present", "oldest", "added", "forgotten")

    def __init__(self, high: str | None, floor: str | None, entries: list[str]) -> None:
        self.high = int(high) if high is not None else None
        self.floor = int(floor) if floor is not None else None
        self.present = set(entries)
        self.count = len(self.present)
        self.oldest = [(len(n), n) for n in self.present]
        heapq.heapify(self.oldest)
        self.added: set[str] = set()
        self.forgotten: list[str] = []

    def decide(self, nonce: str, value: int | None, limit: int) -> bool | None:
        """Accept or refuse; ``None``: the nonce would make the key random-style (the database decides that)."""
        if value is not None and self.floor is not None and value <= self.floor:
            return False
        if nonce in self.present:
            return False
        if value is None or (self.high is not None and self.high - value > SPREAD_GAP):
            return None
        self.present.add(nonce)
        self.added.add(nonce)
        heapq.heappush(self.oldest, (len(nonce), nonce))
        self.count += 1
        while self.count > limit and self.oldest:
            _, doomed = heapq.heappop(self.oldest)
            self.present.discard(doomed)
            self.count -= 1
            if doomed in self.added:
                self.added.discard(doomed)
            else:
                self.forgotten.append(doomed)
            gone = nonce_as_u64(doomed)  # forgotten for good: the floor refuses it from now on
            if gone is not None and (self.floor is None or gone > self.floor):
                self.floor = gone
        if self.high is None or value > self.high:
            self.high = value
        return True


class _Held:
    """One key's window while this process holds its lease."""

    __slots__ = ("window", "ceiling", "valid_until", "used_at", "raising", "base", "releasing")

    def __init__(self, window: HeldWindow, ceiling: int, valid_until: float) -> None:
        self.window = window
        self.ceiling = ceiling
        self.valid_until = valid_until  # monotonic: decide only before this
        self.used_at = time.monotonic()
        self.raising = asyncio.Lock()  # one ceiling raise at a time
        self.base = (time.monotonic(), ceiling)  # (when, nonce) of the last ceiling: the key's nonce growth
        self.releasing = False


class LeaseStore(Protocol):
    """Where a key's lease row and window live (the SQLite file, or Redis). ``until`` of a lease is
    the store's own business: ``LEASE_SECONDS`` from when it handles the call, at the earliest."""

    async def set_ceiling(self, key: str, holder: str, ceiling: str) -> bool:
        """Commit a new ceiling (and extend the lease) if the lease is still ``holder``'s."""

    async def load(self, keys: list[str]) -> dict[str, HeldWindow | None]:
        """The windows of keys just leased (``None``: gone, or random-style)."""

    async def renew(self, holder: str, keys: list[str]) -> dict[str, bool]:
        """Extend every lease still ``holder``'s: key -> contended (keys lost are left out)."""

    async def hand_back(self, key: str, holder: str, window: HeldWindow, shared: bool) -> None:
        """Write the exact window and end the lease (``shared``: leave a shared mark), if still ``holder``'s."""

    async def contend(self, key: str, holder: str) -> bool:
        """Ask another live holder to hand back; whether one holds the key."""

    async def revoke(self, key: str) -> None:
        """End the key's lease wherever it is: a holder's ceiling becomes the key's floor; a shared mark."""

    async def handed_over(self, key: str, holder: str) -> bool:
        """Whether no other live process holds the key's lease."""


class WindowLeases:
    """This process's leases: the in-memory decisions, the renewals and the hand-overs."""

    def __init__(self, store: LeaseStore, holder: str) -> None:
        self.store = store
        self.holder = holder
        self._held: dict[str, _Held] = {}
        self._installing: dict[str, asyncio.Event] = {}
        self._releasing: dict[str, asyncio.Event] = {}
        self._renewal: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def sight(self, now: float) -> LeaseSight:
        return LeaseSight(self.holder, now, self.may_take, self.held_here)

    def may_take(self, key: str) -> bool:
        return key not in self._held and len(self._held) + len(self._installing) < MAX_HELD

    def held_here(self, key: str) -> bool:
        return key in self._held or key in self._installing

    @property
    def held(self) -> list[str]:
        return list(self._held)

    # ----- deciding ------------------------------------------------------------------------------
    def decide_now(self, api_key: str, nonce: str, limit: int) -> bool | None:
        """The claim decided in memory at once, or ``None``: not held here, or not now (the lease is
        to renew, the nonce is above the ceiling, or would make the key random-style): ``claim``."""
        held = self._held.get(api_key)
        if held is None or held.releasing:
            return None
        now = time.monotonic()
        if now >= held.valid_until:
            return None
        value = nonce_as_u64(nonce)
        if value is not None and value > held.ceiling:
            return None
        verdict = held.window.decide(nonce, value, limit)
        if verdict is not None:
            held.used_at = now
        return verdict

    async def claim(self, claim: WindowClaim) -> bool | None:
        """The claim decided in memory, or ``None`` if this process does not hold the key's lease (or
        gives it up now): the database decides it."""
        key = claim.api_key
        installing = self._installing.get(key)
        if installing is not None:
            await installing.wait()
        held = self._held.get(key)
        if held is None:
            return None
        value = nonce_as_u64(claim.nonce)
        while True:
            if held.releasing or self._held.get(key) is not held:
                releasing = self._releasing.get(key)
                if releasing is not None:
                    await releasing.wait()  # then the database decides (the row is no longer this process's)
                return None
            if time.monotonic() >= held.valid_until:
                await self.renew()
                continue
            if value is not None and value > held.ceiling:
                if not await self._raise_ceiling(key, held, value):
                    return None
                continue
            break
        verdict = held.window.decide(claim.nonce, value, claim.limit)
        if verdict is None:  # the key turns random-style: the database decides it from now on, no lease
            await self.release(key, shared=True)
            return None
        held.used_at = time.monotonic()
        return verdict

    async def _raise_ceiling(self, key: str, held: _Held, value: int) -> bool:
        """Commit a ceiling above ``value`` before accepting it. One raise at a time: the claims that
        waited for it find the new ceiling and write nothing more."""
        async with held.raising:
            if self._held.get(key) is not held:
                return False
            if value <= held.ceiling:
                return True
            when, base = held.base
            now = time.monotonic()
            growth = (value - base) / max(now - when, 0.01) * RESERVE_SECONDS
            ceiling = min(value + max(MIN_MARGIN, int(growth)), U64_MAX)
            if not await self.store.set_ceiling(key, self.holder, sortable(ceiling)):
                self._drop(key)
                return False
            held.ceiling, held.base = ceiling, (now, value)
            held.valid_until = max(held.valid_until, now + LEASE_SECONDS - LEASE_MARGIN)
            return True

    # ----- taking, renewing, handing back ------------------------------------------------------
    async def install(self, keys: dict[str, str], started: float, loaded: dict[str, HeldWindow | None] | None = None) -> None:
        """Load the windows of the keys a batch just leased (``LeaseSight.taken``: key -> ceiling),
        nothing else writing them meanwhile: every other process's claim waits for this lease.
        ``loaded``: the windows, if the batch read them already (Redis's does)."""
        events = {k: self._installing.setdefault(k, asyncio.Event()) for k in keys}
        try:
            if loaded is None:
                loaded = await self.store.load(list(keys))
            for key, window in loaded.items():
                if window is not None:
                    self._held[key] = _Held(window, int(keys[key]), started + LEASE_SECONDS - LEASE_MARGIN)
        finally:
            for key, event in events.items():
                self._installing.pop(key, None)
                event.set()
        self._ensure_task()

    def _ensure_task(self) -> None:
        if self._held and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="keygate-window-leases")

    async def _loop(self) -> None:
        while self._held:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await self.renew()
            except Exception as exc:  # the database is away: the leases lapse here, claims wait or go to it
                log.warning("renewing nonce leases failed (%s)", type(exc).__name__)

    async def renew(self) -> None:
        """Renew every lease at once (one flight at a time); drop those lost, hand back the contended,
        idle ones."""
        if self._renewal is not None:
            return await asyncio.shield(self._renewal)
        self._renewal = asyncio.get_running_loop().create_future()
        try:
            started = time.monotonic()
            before = dict(self._held)  # a key leased while the renewal is under way is not judged by it
            rows = await self.store.renew(self.holder, list(before))
            for key in [k for k in before if k not in rows]:
                log.info("nonce lease of a key lost (revoked or expired); its claims go to the database")
                if self._held.get(key) is before[key]:
                    self._drop(key)
            for key, held in list(before.items()):
                if self._held.get(key) is not held:
                    continue
                held.valid_until = started + LEASE_SECONDS - LEASE_MARGIN
                if rows.get(key) or started - held.used_at > IDLE_SECONDS:
                    await self.release(key, shared=bool(rows.get(key)))
            self._renewal.set_result(None)
        except BaseException as exc:
            self._renewal.set_exception(exc)
            raise
        finally:
            renewal, self._renewal = self._renewal, None
            if renewal.done() and not renewal.cancelled():
                renewal.exception()

    def forget(self, key: str) -> None:
        """The key is gone (deleted): its window is dropped unwritten, and so is its lease's row."""
        self._drop(key)

    def _drop(self, key: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            held.releasing = True

    async def release(self, key: str, shared: bool) -> None:
        """Hand the key back: its exact window written, the lease row gone (``shared``: a shared mark)."""
        held = self._held.get(key)
        if held is None or held.releasing:
            return
        held.releasing = True  # from now on no claim of the key is decided here
        done = self._releasing[key] = asyncio.Event()
        try:
            await self.store.hand_back(key, self.holder, held.window, shared)
        finally:
            if self._held.get(key) is held:
                del self._held[key]
            del self._releasing[key]
            done.set()

    async def revoke(self, key: str) -> None:
        """End the key's lease wherever it is held (an operator changes the key's mode), leaving a
        shared mark: held here, the exact window is written back; held by a live process, it is asked
        to hand back (as for a contended key) and awaited; a lease not handed back in time, or a dead
        holder's, is revoked: the floor rises to its ceiling."""
        if key in self._held:
            await self.release(key, shared=True)
            return
        if await self.store.contend(key, self.holder):
            await self.wait_for_handover(key)
        await self.store.revoke(key)

    async def wait_for_handover(self, key: str) -> None:
        """Until the key's lease held elsewhere is handed back or has expired (at most ``HANDOVER_WAIT_SECONDS``)."""
        releasing = self._releasing.get(key)
        if releasing is not None:
            await releasing.wait()  # handed back by this process: the database decides on the next try
            return
        if key in self._held:
            return  # this process's own: decided in memory on the next try
        deadline = time.monotonic() + HANDOVER_WAIT_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            if await self.store.handed_over(key, self.holder):
                return

    async def close(self) -> None:
        """Hand every key back (shutdown): the next process finds exact windows, no revocation."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for key in list(self._held):
            try:
                await self.release(key, shared=False)
            except Exception as exc:  # the store is away: the leases expire and are revoked
                left = list(self._held)
                log.warning("handing back nonce leases failed (%s): %d lease(s) left to expire and be revoked",
                            type(exc).__name__, len(left) + 1)
                for other in left:  # one failure is enough: a store away would fail each after its timeout
                    self._drop(other)
                return


async def claim_window(leases: WindowLeases, claim: WindowClaim, submit: Callable[[WindowClaim], Awaitable[bool | None]]) -> bool:
    """A ``window`` claim where leases are used: decided in memory if this process holds the key's
    lease, else by ``submit`` (a batch of the store's, which may lease the key here, or answer
    ``None``: the key is leased elsewhere). Such a claim waits for the hand-over, then tries again
    (a few times, then it is refused: fail closed)."""
    verdict = leases.decide_now(claim.api_key, claim.nonce, claim.limit)
    if verdict is not None:
        return verdict
    for _ in range(WINDOW_TRIES):
        held = await leases.claim(claim)
        if held is not None:
            return held
        decided = await submit(claim)
        if decided is not None:
            return decided
        await leases.wait_for_handover(claim.api_key)
    return False


WINDOW_TRIES = 5  # a claim meeting another process's lease this many times in a row is refused


class SqliteLeaseStore:
    """Lease rows in the SQLite file's ``nonce_leases`` table, ``until`` on the (one) machine's wall clock."""

    def __init__(self, run: Runner) -> None:
        self._run = run

    async def set_ceiling(self, key: str, holder: str, ceiling: str) -> bool:
        until = time.time() + LEASE_SECONDS
        return bool(await self._run(lambda db: _set_ceiling(db, key, holder, ceiling, until)))

    async def load(self, keys: list[str]) -> dict[str, HeldWindow | None]:
        return dict(await self._run(lambda db: {k: _load_window(db, k) for k in keys}))

    async def renew(self, holder: str, keys: list[str]) -> dict[str, bool]:
        until = time.time() + LEASE_SECONDS
        return dict(await self._run(lambda db: _renew(db, holder, until)))

    async def hand_back(self, key: str, holder: str, window: HeldWindow, shared: bool) -> None:
        await self._run(lambda db: _hand_back(db, key, holder, window, shared))

    async def contend(self, key: str, holder: str) -> bool:
        return bool(await self._run(lambda db: in_transaction(db, lambda: _contend(db, key, holder, time.time()))))

    async def revoke(self, key: str) -> None:
        await self._run(lambda db: _revoke(db, key, time.time()))

    async def handed_over(self, key: str, holder: str) -> bool:
        row = await self._run(lambda db: db.execute("SELECT holder, until FROM nonce_leases WHERE api_key = ?", (key,)).fetchone())
        return row is None or row[0] in ("", holder) or row[1] <= time.time()


# ----- the statements (plain sqlite3, on the direct connection or a pooled one) -------------------
def _set_ceiling(db: sqlite3.Connection, key: str, holder: str, ceiling: str, until: float) -> bool:
    return bool(in_transaction(db, lambda: db.execute(
        "UPDATE nonce_leases SET ceiling = ?, until = ? WHERE api_key = ? AND holder = ?", (ceiling, until, key, holder)).rowcount))


def _renew(db: sqlite3.Connection, holder: str, until: float) -> dict[str, bool]:
    def work() -> dict[str, bool]:
        db.execute("UPDATE nonce_leases SET until = ? WHERE holder = ?", (until, holder))
        return {k: bool(c) for k, c in db.execute("SELECT api_key, contended FROM nonce_leases WHERE holder = ?", (holder,))}
    return in_transaction(db, work)


def _load_window(db: sqlite3.Connection, key: str) -> HeldWindow | None:
    row = db.execute("SELECT last_nonce, nonce_floor, nonce_spread FROM api_keys WHERE api_key = ?", (key,)).fetchone()
    if row is None or row[2]:
        return None
    far = _far_future_from(datetime.now(timezone.utc))
    entries = [r[0] for r in db.execute("SELECT nonce FROM used_nonces WHERE api_key = ? AND expires_at > ?", (key, far))]
    return HeldWindow(row[0], row[1], entries)


def _hand_back(db: sqlite3.Connection, key: str, holder: str, window: HeldWindow, shared: bool) -> None:
    def work() -> None:
        mine = db.execute("SELECT 1 FROM nonce_leases WHERE api_key = ? AND holder = ?", (key, holder)).fetchone()
        if mine is None:
            return  # revoked meanwhile: its floor covers what was accepted here
        expires = sqlite_time(datetime.now(timezone.utc) + timedelta(seconds=FAR_FUTURE_SECONDS))
        db.executemany("DELETE FROM used_nonces WHERE api_key = ? AND nonce = ?", [(key, n) for n in window.forgotten])
        db.executemany("INSERT OR REPLACE INTO used_nonces (api_key, nonce, expires_at) VALUES (?, ?, ?)",
                       [(key, n, expires) for n in window.added])
        db.execute("UPDATE api_keys SET last_nonce = ?, nonce_floor = ?, nonce_count = ? WHERE api_key = ?",
                   (_sortable(window.high), _sortable(window.floor), window.count, key))
        if shared:
            share(db, key, time.time())
        else:
            db.execute("DELETE FROM nonce_leases WHERE api_key = ?", (key,))
    in_transaction(db, work)


def _sortable(value: int | None) -> str | None:
    return sortable(value) if value is not None else None


def _contend(db: sqlite3.Connection, key: str, holder: str, now: float) -> bool:
    """Mark the key's lease contended if another live process holds it; whether one does."""
    return bool(db.execute("UPDATE nonce_leases SET contended = 1 WHERE api_key = ? AND holder NOT IN ('', ?) AND until > ?",
                           (key, holder, now)).rowcount)


def _revoke(db: sqlite3.Connection, key: str, now: float) -> None:
    def work() -> None:
        row = db.execute("SELECT holder, ceiling FROM nonce_leases WHERE api_key = ?", (key,)).fetchone()
        if row is not None and row[0] != "" and row[1] is not None:
            raise_floor(db, key, row[1])
        share(db, key, now)
    in_transaction(db, work)


def share(db: sqlite3.Connection, key: str, now: float) -> None:
    """Leave the key a shared mark: for ``SHARED_SECONDS`` nobody leases it (its ceiling is no one's)."""
    db.execute("INSERT INTO nonce_leases (api_key, holder, until, ceiling, contended) VALUES (?, '', ?, NULL, 0) "
               "ON CONFLICT (api_key) DO UPDATE SET holder = '', until = excluded.until, ceiling = NULL, contended = 0",
               (key, now + SHARED_SECONDS))


def raise_floor(db: sqlite3.Connection, key: str, ceiling: str) -> None:
    """A revoked lease: every nonce up to its ceiling is refused from now on, by every mode."""
    db.execute("UPDATE api_keys SET nonce_floor = CASE WHEN nonce_floor IS NULL OR nonce_floor < ?1 THEN ?1 ELSE nonce_floor END, "
               "last_nonce = CASE WHEN last_nonce IS NULL OR last_nonce < ?1 THEN ?1 ELSE last_nonce END WHERE api_key = ?2",
               (ceiling, key))

