"""Repositories: the only code that speaks SQL. Each returns domain objects, never rows."""

from __future__ import annotations

import builtins
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keygate.domain.errors import Conflict
from keygate.domain.iprules import IpAllowlist
from keygate.domain.key_material import KeyType, decode_stored_public_key, format_public_key
from keygate.domain.keys import ApiKey
from keygate.domain.paging import Search
from keygate.domain.permissions import Permission, format_permissions, parse_permissions
from keygate.domain.replay import ReplayMode, sortable
from keygate.domain.sessions import Session, SessionKind
from keygate.domain.users import User
from keygate.store.database import dialect_insert
from keygate.store.tables import (
    api_keys,
    audit_events,
    key_usage,
    nonce_leases,
    sessions,
    signature_nonces,
    used_nonces,
    users,
)

T = TypeVar("T")


def _perms_to_db(perms: Iterable[Permission]) -> str:
    if isinstance(perms, frozenset):
        return _frozen_perms_to_db(perms)
    return ",".join(format_permissions(perms))


@functools.lru_cache(maxsize=64)  # a handful of distinct sets, written with every session
def _frozen_perms_to_db(perms: frozenset[Permission]) -> str:
    return ",".join(format_permissions(perms))


def _user(row: Row[Any]) -> User:
    m = row._mapping
    return User(
        user_id=m["user_id"],
        username=m["username"],
        email=m["email"],
        password_hash=m["password_hash"],
        is_admin=bool(m["is_admin"]),
        locked=bool(m["locked"]),
        sealed_totp_secret=m["sealed_totp_secret"],
        sealed_pending_totp=m["sealed_pending_totp"],
        account_id=m["account_id"],
        created_at=m["created_at"],
        locked_until=m["locked_until"],
        sessions_valid_after=m["sessions_valid_after"],
    )


def _key(row: Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        api_key=m["api_key"],
        user_id=m["user_id"],
        label=m["label"],
        permissions=parse_permissions(m["permissions"]),
        ip_allowlist=IpAllowlist.parse(m["ip_allowlist"]),
        sealed_secret=bytes(m["sealed_secret"]) if m["sealed_secret"] is not None else None,
        nonce=m["nonce"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_used_at=m["last_used_at"],
        replay_mode=ReplayMode(m["replay_mode"]),
        expires_at=m["expires_at"],
        sealed_previous_secret=bytes(m["sealed_previous_secret"]) if m["sealed_previous_secret"] is not None else None,
        previous_secret_expires_at=m["previous_secret_expires_at"],
        secret_serial=m["secret_serial"],
        replay_floor=int(m["replay_floor"]) if m["replay_floor"] is not None else None,
        replay_floor_until=m["replay_floor_until"],
        last_used_ip=m["last_used_ip"],
        key_type=KeyType(m["key_type"]),
        public_key=decode_stored_public_key(m["public_key"]) if m["public_key"] else None,
        previous_public_key=decode_stored_public_key(m["previous_public_key"]) if m["previous_public_key"] else None,
        requires_v2=bool(m["requires_v2"]),
    )


def _public(raw: bytes | None) -> str | None:
    return format_public_key(raw) if raw is not None else None


def _session(row: Row[Any]) -> Session:
    m = row._mapping
    return Session(
        token_hash=m["token_hash"],
        user_id=m["user_id"],
        kind=SessionKind(m["kind"]),
        permissions=parse_permissions(m["permissions"]),
        api_key=m["api_key"],
        client_ip=m["client_ip"],
        created_at=m["created_at"],
        last_seen_at=m["last_seen_at"],
        expires_at=m["expires_at"],
        key_serial=m["key_serial"],
    )


@asynccontextmanager
async def _writing(engine: AsyncEngine, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
    """The caller's transaction when it gives one (a change, its audit row and its change-log row
    commit together), else a transaction of its own."""
    if conn is not None:
        yield conn
        return
    async with engine.begin() as own:
        yield own


# Every character a username or an API key may hold sorts below this one (both are ASCII), so a prefix's
# matches lie in the range [prefix, prefix + _AFTER): an index range on both SQLite and PostgreSQL. The
# LIKE repeats the test for collations that do not sort byte by byte.
_AFTER = "\x7f"


def _like_escaped(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _name_prefix(prefix: str) -> Any:
    name = func.lower(users.c.username)
    return (name >= prefix) & (name < prefix + _AFTER) & name.like(_like_escaped(prefix), escape="\\")


def _key_prefix(prefix: str) -> Any:
    key = api_keys.c.api_key
    return (key >= prefix) & (key < prefix + _AFTER) & key.like(_like_escaped(prefix), escape="\\")


async def _concatenated(engine: AsyncEngine, parts: Sequence[Any], offset: int, limit: int,
                        to_item: Callable[[Row[Any]], T]) -> list[T]:
    """Rows ``offset`` to ``offset + limit`` of the queries' results one after another (each ordered),
    without counting any of them: a part is read up to the page's end, and a later part starts where
    the earlier ones ran out."""
    found: list[T] = []
    async with engine.connect() as conn:
        for query in parts:
            rows = (await conn.execute(query.offset(offset).limit(limit - len(found)))).all()
            found.extend(to_item(r) for r in rows)
            if len(found) >= limit:
                break
            if rows:
                offset = 0
            else:  # this part ended before the page began: how many rows did it hold?
                held = len((await conn.execute(query.with_only_columns(query.selected_columns[0])
                                               .limit(offset))).all())
                offset -= held
    return found


async def _delete_sessions(conn: AsyncConnection, condition: Any) -> list[str]:
    """Delete the sessions that match; return their token hashes, so caches can drop them too."""
    result = await conn.execute(delete(sessions).where(condition).returning(sessions.c.token_hash))
    return [row[0] for row in result.all()]


class UserRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, username: str, email: str, password_hash: str, is_admin: bool, now: datetime,
                     conn: AsyncConnection | None = None) -> User:
        async with _writing(self._engine, conn) as conn:
            try:
                result = await conn.execute(
                    insert(users).values(
                        username=username,
                        email=email,
                        password_hash=password_hash,
                        is_admin=is_admin,
                        locked=False,
                        account_id=0,
                        created_at=now,
                    )
                )
            except IntegrityError:
                raise Conflict(f"A user named {username!r} already exists") from None
            primary = result.inserted_primary_key
            if primary is None:  # not for an INSERT of one row; for the type checker
                raise RuntimeError("the new user's id was not returned")
            user_id = primary[0]
            # One trading account per user, numbered like the user, as GetUserAccounts reports it.
            await conn.execute(update(users).where(users.c.user_id == user_id).values(account_id=user_id))
            row = (await conn.execute(select(users).where(users.c.user_id == user_id))).one()
        return _user(row)

    async def get(self, user_id: int) -> User | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.user_id == user_id))).first()
        return _user(row) if row else None

    async def get_by_name(self, username: str) -> User | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(users).where(func.lower(users.c.username) == username.lower()))
            ).first()
        return _user(row) if row else None

    async def count(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(users))).scalar_one())

    async def page(self, search: Search, offset: int, limit: int) -> builtins.list[User]:
        """Up to ``limit`` users from ``offset``: by id (the newest first), or (a name prefix) by name, in index order."""
        query = select(users)
        if search.user_id is not None:
            query = query.where(users.c.user_id == search.user_id)
        elif search.name_prefix:
            query = query.where(_name_prefix(search.name_prefix)).order_by(func.lower(users.c.username))
        else:
            query = query.order_by(users.c.user_id.desc())  # the newest first
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.offset(offset).limit(limit))).all()
        return [_user(r) for r in rows]

    async def names(self, user_ids: Iterable[int]) -> dict[int, str]:
        """The usernames of these ids (one query; unknown ids are left out)."""
        wanted = sorted(set(user_ids))
        if not wanted:
            return {}
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(users.c.user_id, users.c.username)
                                       .where(users.c.user_id.in_(wanted)))).all()
        return {r[0]: r[1] for r in rows}

    async def update(self, user_id: int, conn: AsyncConnection | None = None, **values: Any) -> None:
        async with _writing(self._engine, conn) as conn:
            await conn.execute(update(users).where(users.c.user_id == user_id).values(**values))

    async def all_sealed(self, column: str) -> builtins.list[tuple[int, bytes]]:
        col = users.c[column]
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(users.c.user_id, col).where(col.is_not(None)))).all()
        return [(r[0], bytes(r[1])) for r in rows]

    async def replace_sealed(self, user_id: int, old: bytes, new: bytes, column: str) -> bool:
        col = users.c[column]
        async with self._engine.begin() as conn:
            result = await conn.execute(update(users).where(users.c.user_id == user_id, col == old).values({column: new}))
        return result.rowcount > 0


class KeyRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, key: ApiKey, conn: AsyncConnection | None = None) -> None:
        async with _writing(self._engine, conn) as conn:
            await conn.execute(
                insert(api_keys).values(
                    api_key=key.api_key,
                    user_id=key.user_id,
                    label=key.label,
                    permissions=_perms_to_db(key.permissions),
                    ip_allowlist=key.ip_allowlist.serialize(),
                    sealed_secret=key.sealed_secret,
                    nonce=key.nonce,
                    created_at=key.created_at,
                    updated_at=key.updated_at,
                    last_used_at=None,
                    replay_mode=key.replay_mode.value,
                    expires_at=key.expires_at,
                    secret_serial=key.secret_serial,
                    key_type=key.key_type.value,
                    public_key=_public(key.public_key),
                    requires_v2=key.requires_v2,
                )
            )

    async def get(self, api_key: str) -> ApiKey | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.api_key == api_key))).first()
        return _key(row) if row else None

    async def list(self, user_id: int) -> list[ApiKey]:
        """One user's keys (at most ``MAX_KEYS_PER_USER``), oldest first."""
        query = (select(api_keys).where(api_keys.c.user_id == user_id)
                 .order_by(api_keys.c.user_id, api_keys.c.created_at, api_keys.c.api_key))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_key(r) for r in rows]

    async def page(self, search: Search, offset: int, limit: int) -> builtins.list[ApiKey]:
        """Up to ``limit`` keys from ``offset``, each query in index order: every key (or one user's) by
        owner and age, the newest first; for a prefix, the keys that start with it first, then the keys of the users whose
        name starts with it (by name); for a number, the keys of that user id, then the keys that start with it."""
        # The newest first; the key itself breaks ties (keys made in the same instant), so that every
        # page's query puts the same rows in the same order and no row is listed twice or never.
        by_owner = (api_keys.c.user_id.desc(), api_keys.c.created_at.desc(), api_keys.c.api_key.desc())
        if search.user_id is not None:
            query = select(api_keys).where(api_keys.c.user_id == search.user_id).order_by(*by_owner)
            if not search.key_prefix:
                return await self._rows(query, offset, limit)
            # A number: the user's keys, then the keys that start with its digits (the user's left out).
            prefixed = (select(api_keys).where(_key_prefix(search.key_prefix), api_keys.c.user_id != search.user_id)
                        .order_by(api_keys.c.api_key))
            return await _concatenated(self._engine, [query, prefixed], offset, limit, _key)
        if search.empty:
            return await self._rows(select(api_keys).order_by(*by_owner), offset, limit)
        parts = []
        if search.key_prefix:
            parts.append(select(api_keys).where(_key_prefix(search.key_prefix)).order_by(api_keys.c.api_key))
        if search.name_prefix:
            query = (select(api_keys).join(users, users.c.user_id == api_keys.c.user_id)
                     .where(_name_prefix(search.name_prefix))
                     .order_by(func.lower(users.c.username), api_keys.c.created_at, api_keys.c.api_key))
            if search.key_prefix:
                query = query.where(~_key_prefix(search.key_prefix))  # listed in the first part already
            parts.append(query)
        return await _concatenated(self._engine, parts, offset, limit, _key)

    async def _rows(self, query: Any, offset: int, limit: int) -> builtins.list[ApiKey]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.offset(offset).limit(limit))).all()
        return [_key(r) for r in rows]

    async def save(self, key: ApiKey, conn: AsyncConnection | None = None, end_sessions: bool = False) -> builtins.list[str]:
        """Write the editable fields; with ``end_sessions``, delete the key's sessions in the same
        transaction. Returns the token hashes of the sessions deleted.

        The replay state (``last_nonce``, used nonces) is never written here: no edit, rotation or
        change of mode may make an accepted nonce acceptable again.
        """
        async with _writing(self._engine, conn) as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.api_key == key.api_key)
                .values(
                    label=key.label,
                    permissions=_perms_to_db(key.permissions),
                    ip_allowlist=key.ip_allowlist.serialize(),
                    sealed_secret=key.sealed_secret,
                    nonce=key.nonce,
                    updated_at=key.updated_at,
                    replay_mode=key.replay_mode.value,
                    expires_at=key.expires_at,
                    sealed_previous_secret=key.sealed_previous_secret,
                    previous_secret_expires_at=key.previous_secret_expires_at,
                    secret_serial=key.secret_serial,
                    replay_floor=sortable(key.replay_floor) if key.replay_floor is not None else None,
                    replay_floor_until=key.replay_floor_until,
                    public_key=_public(key.public_key),
                    previous_public_key=_public(key.previous_public_key),
                    requires_v2=key.requires_v2,
                )
            )
            return await _delete_sessions(conn, sessions.c.api_key == key.api_key) if end_sessions else []

    async def delete(self, api_key: str, conn: AsyncConnection | None = None) -> builtins.list[str]:
        """Delete the key and, in the same transaction, every session it made (their hashes are returned)
        and its replay state: remembered nonces (a ``window`` key's never expire) and its lease."""
        async with _writing(self._engine, conn) as conn:
            ended = await _delete_sessions(conn, sessions.c.api_key == api_key)
            await conn.execute(delete(key_usage).where(key_usage.c.api_key == api_key))
            await conn.execute(delete(used_nonces).where(used_nonces.c.api_key == api_key))
            await conn.execute(delete(signature_nonces).where(signature_nonces.c.api_key == api_key))
            await conn.execute(delete(nonce_leases).where(nonce_leases.c.api_key == api_key))
            await conn.execute(delete(api_keys).where(api_keys.c.api_key == api_key))
        return ended

    async def record_use(self, used: dict[str, tuple[datetime, str | None]]) -> None:
        """Write each key's last use: its time and the client's address (one statement for the flush)."""
        if not used:
            return
        statement = (update(api_keys).where(api_keys.c.api_key == bindparam("k"))
                     .values(last_used_at=bindparam("t"), last_used_ip=bindparam("ip")))
        async with self._engine.begin() as conn:
            await conn.execute(statement, [{"k": k, "t": at, "ip": ip} for k, (at, ip) in used.items()])

    async def add_usage(self, counts: dict[tuple[str, datetime], tuple[int, int]]) -> None:
        """Add ``(api_key, hour) -> (requests, refusals)`` to the stored counts (every process adds its
        own). Counts of keys deleted meanwhile are dropped, so a deleted key leaves no rows behind."""
        if not counts:
            return
        async with self._engine.begin() as conn:
            names = {k for k, _ in counts}
            live = set((await conn.execute(select(api_keys.c.api_key).where(api_keys.c.api_key.in_(names)))).scalars())
            rows = [{"api_key": k, "hour": hour, "requests": req, "refusals": ref}
                    for (k, hour), (req, ref) in counts.items() if k in live]
            if not rows:
                return
            statement = dialect_insert(self._engine.dialect.name)(key_usage)
            statement = statement.on_conflict_do_update(
                index_elements=[key_usage.c.api_key, key_usage.c.hour],
                set_={"requests": key_usage.c.requests + statement.excluded.requests,
                      "refusals": key_usage.c.refusals + statement.excluded.refusals},
            )
            await conn.execute(statement, rows)

    async def usage(self, api_key: str, since: datetime) -> dict[datetime, tuple[int, int]]:
        """The stored ``hour -> (requests, refusals)`` of a key from ``since`` on."""
        query = (select(key_usage.c.hour, key_usage.c.requests, key_usage.c.refusals)
                 .where(key_usage.c.api_key == api_key, key_usage.c.hour >= since))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    async def usage_many(self, keys: Sequence[str], since: datetime) -> dict[str, dict[datetime, tuple[int, int]]]:
        """As ``usage``, for several keys in one query."""
        found: dict[str, dict[datetime, tuple[int, int]]] = {k: {} for k in keys}
        if not keys:
            return found
        query = (select(key_usage.c.api_key, key_usage.c.hour, key_usage.c.requests, key_usage.c.refusals)
                 .where(key_usage.c.api_key.in_(list(keys)), key_usage.c.hour >= since))
        async with self._engine.connect() as conn:
            for r in (await conn.execute(query)).all():
                found[r[0]][r[1]] = (int(r[2]), int(r[3]))
        return found

    async def purge_usage(self, before: datetime) -> int:
        """Drop hours older than ``before``, and any left by a key that no longer exists."""
        async with self._engine.begin() as conn:
            old = await conn.execute(delete(key_usage).where(key_usage.c.hour < before))
            orphans = await conn.execute(delete(key_usage).where(
                ~key_usage.c.api_key.in_(select(api_keys.c.api_key))))
        return int(old.rowcount or 0) + int(orphans.rowcount or 0)

    async def all_sealed(self, column: str = "sealed_secret") -> builtins.list[tuple[str, bytes]]:
        col = api_keys.c[column]
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(api_keys.c.api_key, col).where(col.is_not(None)))).all()
        return [(r[0], bytes(r[1])) for r in rows]

    async def replace_sealed(self, api_key: str, old: bytes, new: bytes, column: str = "sealed_secret") -> bool:
        """Compare-and-set, so a rotation never overwrites a secret that changed meanwhile."""
        col = api_keys.c[column]
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(api_keys).where(api_keys.c.api_key == api_key, col == old).values({column: new})
            )
        return result.rowcount > 0


_SESSION_COLUMNS = ("token_hash", "user_id", "kind", "permissions", "api_key", "client_ip", "created_at", "last_seen_at",
                    "expires_at", "key_serial")
_AUDIT_COLUMNS = ("at", "action", "outcome", "reason", "actor_user_id", "actor", "subject_user_id", "api_key", "client_ip", "detail")


def _plain_time(value: datetime, sqlite: bool) -> datetime | str:
    """What ``UTCDateTime`` binds: naive UTC; on SQLite, as the text SQLAlchemy's DATETIME stores."""
    if value.tzinfo is timezone.utc:
        if sqlite:  # the same text without the "+00:00"; ``replace`` alone costs more than the formatting
            return value.isoformat(" ", "microseconds")[:-6]
        value = value.replace(tzinfo=None)
    elif value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds") if sqlite else value


async def _insert_plain(engine: AsyncEngine, table: Table, columns: Sequence[str], items: Sequence[T],
                        to_row: Callable[[T, bool], tuple[object, ...]], conn: AsyncConnection | None = None) -> None:
    """Insert many rows in one transaction, as plain values rather than through a compiled insert.

    New sessions and audit events are written in batches of hundreds; skipping the per-row work of a
    compiled insert (bind processors, parameter dictionaries) takes about a third off each row.
    ``to_row(item, sqlite)`` gives the values in ``columns`` order, times through ``_plain_time``.

    On SQLite the rows go as multi-row ``INSERT ... VALUES (...), (...)`` statements rather than
    ``executemany``: the driver runs in a thread of its own and gives up the GIL around every
    statement it steps, so ``executemany`` traded the GIL with a busy event loop once per row (each
    trade a pair of context switches, and a wait of up to the interpreter's switch interval). A few
    statements per batch trade it a few times. PostgreSQL's driver pipelines ``executemany`` itself.
    """
    if not items:
        return
    sqlite = engine.dialect.name == "sqlite"
    rows = [to_row(item, sqlite) for item in items]
    names = ", ".join(columns)
    async with _writing(engine, conn) as conn:
        if sqlite:
            for size, chunk in _chunks(rows):
                values = ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * size)
                await conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES {values}",
                                           tuple(v for row in chunk for v in row))
        elif engine.dialect.paramstyle == "numeric_dollar":
            marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            await conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) VALUES ({marks})", rows)
        else:
            await conn.execute(insert(table), [dict(zip(columns, row)) for row in rows])


_CHUNK_SIZES = (256, 64, 16, 4, 1)  # few distinct statement texts, so the driver's statement cache keeps them


def _chunks(rows: list[tuple[object, ...]]) -> Iterator[tuple[int, list[tuple[object, ...]]]]:
    """Split ``rows`` into runs of the sizes in ``_CHUNK_SIZES``, largest first (at most 32 766 values each)."""
    at = 0
    for size in _CHUNK_SIZES:
        while len(rows) - at >= size:
            yield size, rows[at:at + size]
            at += size


def _session_row(s: Session, sqlite: bool) -> tuple[object, ...]:
    created = _plain_time(s.created_at, sqlite)
    seen = created if s.last_seen_at is s.created_at else _plain_time(s.last_seen_at, sqlite)  # as issued
    return (s.token_hash, s.user_id, s.kind.value, _perms_to_db(s.permissions), s.api_key, s.client_ip,
            created, seen, _plain_time(s.expires_at, sqlite), s.key_serial)


class SessionRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, s: Session) -> None:
        await self.insert_many([s])

    async def insert_many(self, items: Sequence[Session]) -> None:
        await _insert_plain(self._engine, sessions, _SESSION_COLUMNS, items, _session_row)

    async def get(self, token_hash: str) -> Session | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.token_hash == token_hash))).first()
        return _session(row) if row else None

    async def delete(self, token_hash: str, conn: AsyncConnection | None = None) -> bool:
        async with _writing(self._engine, conn) as conn:
            result = await conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash))
        return result.rowcount > 0

    async def delete_for_user(self, user_id: int, conn: AsyncConnection | None = None,
                              kinds: Iterable[SessionKind] | None = None, keep: str | None = None) -> list[str]:
        """Delete the user's sessions (only those of ``kinds``, if given; never ``keep``); return their hashes."""
        condition = sessions.c.user_id == user_id
        if kinds is not None:
            condition = condition & sessions.c.kind.in_([k.value for k in kinds])
        if keep is not None:
            condition = condition & (sessions.c.token_hash != keep)
        async with _writing(self._engine, conn) as conn:
            return await _delete_sessions(conn, condition)

    async def page(self, search: Search, now: datetime, idle_cutoff: datetime, offset: int,
                   limit: int) -> builtins.list[Session]:
        """Up to ``limit`` live sessions (pending two-factor sign-ins left out) from ``offset``, in index
        order: by owner and age, the newest first; for a name prefix, by owner's name and age."""
        live = ((sessions.c.kind != SessionKind.PENDING_2FA.value) & (sessions.c.expires_at > now)
                & (sessions.c.last_seen_at > idle_cutoff))
        # The token hash breaks ties (sessions issued in the same instant): one order for every page.
        by_owner = (sessions.c.user_id.desc(), sessions.c.created_at.desc(), sessions.c.token_hash.desc())
        if search.user_id is not None:
            query = select(sessions).where(live, sessions.c.user_id == search.user_id).order_by(*by_owner)
        elif search.name_prefix:
            query = (select(sessions).join(users, users.c.user_id == sessions.c.user_id)
                     .where(live, _name_prefix(search.name_prefix))
                     # users.user_id after the (unique) name: SQLite then reads each user's sessions in
                     # index order instead of sorting them all (migration 0014).
                     .order_by(func.lower(users.c.username), users.c.user_id, sessions.c.created_at, sessions.c.token_hash))
        else:
            query = select(sessions).where(live).order_by(*by_owner)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query.offset(offset).limit(limit))).all()
        return [_session(r) for r in rows]

    async def touch_many(self, seen: dict[str, datetime]) -> None:
        if not seen:
            return
        # One statement for the whole flush (the driver's executemany), not one round trip per session.
        statement = update(sessions).where(sessions.c.token_hash == bindparam("h")).values(last_seen_at=bindparam("t"))
        async with self._engine.begin() as conn:
            await conn.execute(statement, [{"h": token_hash, "t": at} for token_hash, at in seen.items()])

    async def purge_expired(self, now: datetime, idle_cutoff: datetime) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(sessions).where((sessions.c.expires_at <= now) | (sessions.c.last_seen_at <= idle_cutoff))
            )
        return result.rowcount


class AuditEvent(NamedTuple):
    """One audit row. Made for every authentication: a ``NamedTuple`` (immutable, and cheap to
    build), not a frozen dataclass."""

    at: datetime
    action: str
    outcome: str
    reason: str | None = None
    actor_user_id: int | None = None
    actor: str | None = None  # "operator" (the CLI on the server's machine) or "system"; a user is actor_user_id
    subject_user_id: int | None = None
    api_key: str | None = None
    client_ip: str | None = None
    detail: str | None = None
    event_id: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "EventId": self.event_id,
            "At": self.at.isoformat(),
            "Action": self.action,
            "Outcome": self.outcome,
            "Reason": self.reason,
            "ActorUserId": self.actor_user_id,
            "Actor": self.actor or ("user" if self.actor_user_id is not None else None),
            "SubjectUserId": self.subject_user_id,
            "APIKey": self.api_key,
            "ClientIp": self.client_ip,
            "Detail": self.detail,
        }


class AuditRepository:
    """Append-only: there is no update or delete here, by design."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append_many(self, events: Sequence[AuditEvent], conn: AsyncConnection | None = None) -> None:
        await _insert_plain(self._engine, audit_events, _AUDIT_COLUMNS, events, lambda e, sqlite: (
            _plain_time(e.at, sqlite), e.action, e.outcome, e.reason, e.actor_user_id, e.actor, e.subject_user_id,
            e.api_key, e.client_ip, e.detail,
        ), conn)

    async def query(
        self,
        *,
        action: str | None = None,
        outcome: str | None = None,
        user_id: int | None = None,
        api_key: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        q = select(audit_events)
        if action:
            q = q.where(audit_events.c.action == action)
        if outcome:
            q = q.where(audit_events.c.outcome == outcome)
        if user_id is not None:
            q = q.where((audit_events.c.subject_user_id == user_id) | (audit_events.c.actor_user_id == user_id))
        if api_key:
            q = q.where(audit_events.c.api_key == api_key)
        if since:
            q = q.where(audit_events.c.at >= since)
        if until:
            q = q.where(audit_events.c.at < until)
        q = q.order_by(audit_events.c.event_id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [AuditEvent(**{k: r._mapping[k] for k in r._mapping.keys()}) for r in rows]
