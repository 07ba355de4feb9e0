"""Fill a keygate database with many users, API keys and live key sessions, quickly (for the bench).

    from scale_fill import fill
    filled = fill(settings, users=20_000, keys=1_000_000, sessions=1_000_000)

The database named by ``settings`` is migrated first (through ``keygate.service.Keygate``, as the
server does), then rows go straight into the store's tables in one transaction: SQLite through the
``sqlite3`` module (``executemany``), PostgreSQL through asyncpg's ``COPY``. The rows are what the
service writes itself: every key's secret is sealed under the master key for that key
(``domain.secretbox``, ``service.keys.secret_context``), every session is stored by the hash of a
real token (``domain.sessions.hash_token``), so the keys sign and the tokens authenticate. Every
user has one password (hashed once with Argon2, as ``keygate user create`` does); the first is an
administrator.

Layout: user ``i`` is ``{prefix}{i:07d}`` (user ids follow the highest id already there); key ``j``
belongs to user ``j % users`` (at most ``MAX_KEYS_PER_USER`` = 50 a user, so give at least
keys / 50 users); session ``j`` is a key session of key ``j % keys`` (a password session of user
``j % users`` when there are no keys), started now, live for ``session_max_seconds``; ``audit``
key sign-in events of users spread over the table end a little before now.

Run alone: ``python bench/scale_fill.py --keys 1000000 --sessions 1000000 [--database-url URL]``
prints the time it took and a few credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from keygate.config import Settings  # noqa: E402
from keygate.domain.keys import new_nonce  # noqa: E402
from keygate.domain.passwords import hash_password  # noqa: E402
from keygate.domain.sessions import hash_token, new_token  # noqa: E402
from keygate.service.keys import MAX_KEYS_PER_USER, secret_context  # noqa: E402

SAMPLES = 10
_BATCH = 20_000


@dataclass
class Filled:
    """What a bench needs to use the rows: sign in, search, sign calls, send tokens."""

    prefix: str
    users: int
    keys: int
    sessions: int
    password: str  # every filled user's
    admin_username: str  # the first filled user
    first_user_id: int
    seconds: float
    sample_users: list[tuple[int, str]] = field(default_factory=list)  # (user id, username)
    sample_keys: list[tuple[str, str, int]] = field(default_factory=list)  # (api key, secret, owner's user id)
    sample_tokens: list[tuple[str, str]] = field(default_factory=list)  # (session token, its api key or "")


def fill(settings: Settings, users: int, keys: int, sessions: int, prefix: str = "scale", audit: int = 1000) -> Filled:
    """Fill the database of ``settings`` (see the module docstring); call it outside an event loop."""
    return asyncio.run(fill_async(settings, users, keys, sessions, prefix, audit))


async def fill_async(settings: Settings, users: int, keys: int, sessions: int, prefix: str = "scale",
                     audit: int = 1000) -> Filled:
    """As ``fill``, from inside an event loop."""
    if users < 1:
        raise ValueError("fill at least one user")
    if keys > users * MAX_KEYS_PER_USER:
        raise ValueError(f"{keys} keys need at least {-(-keys // MAX_KEYS_PER_USER)} users ({MAX_KEYS_PER_USER} a user)")
    started = time.perf_counter()
    from keygate.service import Keygate

    kg = Keygate(settings, serving=False)
    try:
        await kg.start(bootstrap_admin=False)  # migrated, master key loaded
        box = kg.box
    finally:
        await kg.close()
    password = secrets.token_urlsafe(12)
    password_hash = await asyncio.to_thread(hash_password, password)
    url = settings.resolved_database_url
    sqlite = url.startswith("sqlite")
    first_id = (_sqlite_max_user_id(url) if sqlite else await _pg_max_user_id(url)) + 1
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    lifetime = timedelta(seconds=settings.session_max_seconds)
    mode = settings.default_replay_mode

    def when(value: datetime) -> Any:
        return value.isoformat(" ", "microseconds") if sqlite else value

    created = when(now)
    user_rows = [(first_id + i, f"{prefix}{i:07d}", "", password_hash, i == 0, False, first_id + i, created)
                 for i in range(users)]
    filled = Filled(prefix, users, keys, sessions, password, f"{prefix}{0:07d}", first_id, 0.0,
                    sample_users=[(r[0], r[1]) for r in user_rows[:: max(1, users // SAMPLES)][:SAMPLES]])

    key_names: list[str] = []

    def key_rows() -> Any:
        token_hex = secrets.token_hex
        seal = box.seal
        for j in range(keys):
            api_key, secret = token_hex(16), token_hex(32)
            key_names.append(api_key)
            owner = first_id + j % users
            if j < SAMPLES:
                filled.sample_keys.append((api_key, secret, owner))
            at = when(now + timedelta(microseconds=j))
            yield (api_key, owner, "", "", "", seal(secret, secret_context(api_key)), new_nonce(), at, at, mode)

    def session_rows() -> Any:
        expires = when(now + lifetime)
        for j in range(sessions):
            token = new_token(now.timestamp())
            if j < SAMPLES:
                filled.sample_tokens.append((token, key_names[j % keys] if keys else ""))
            token_hash = hash_token(token)
            if keys:
                api_key = key_names[j % keys]
                yield (token_hash, first_id + (j % keys) % users, "key", "", api_key, "127.0.0.1", created, created, expires, 1)
            else:
                yield (token_hash, first_id + j % users, "password", "", None, "127.0.0.1", created, created, expires, None)

    def audit_rows() -> Any:
        for j in range(audit):  # key sign-ins of users all over the table, as the audit page shows them
            at = when(now - timedelta(seconds=audit - j))
            owner = first_id + (j * 7919) % users
            yield (at, "auth.key", "success", None, owner, None, owner, None, "127.0.0.1", None)

    tables = [("users", _USER_COLUMNS, iter(user_rows)), ("api_keys", _KEY_COLUMNS, key_rows()),
              ("sessions", _SESSION_COLUMNS, session_rows()), ("audit_events", _AUDIT_COLUMNS, audit_rows())]
    if sqlite:
        await asyncio.to_thread(_sqlite_fill, url, tables)
    else:
        await _pg_fill(url, tables)
    filled.seconds = time.perf_counter() - started
    return filled


_USER_COLUMNS = ("user_id", "username", "email", "password_hash", "is_admin", "locked", "account_id", "created_at")
_KEY_COLUMNS = ("api_key", "user_id", "label", "permissions", "ip_allowlist", "sealed_secret", "nonce", "created_at",
                "updated_at", "replay_mode")
_AUDIT_COLUMNS = ("at", "action", "outcome", "reason", "actor_user_id", "actor", "subject_user_id", "api_key", "client_ip",
                  "detail")
_SESSION_COLUMNS = ("token_hash", "user_id", "kind", "permissions", "api_key", "client_ip", "created_at", "last_seen_at",
                    "expires_at", "key_serial")


def _sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1].split("?", 1)[0]


def _sqlite_max_user_id(url: str) -> int:
    import sqlite3

    with sqlite3.connect(_sqlite_path(url)) as conn:
        return int(conn.execute("SELECT coalesce(max(user_id), 0) FROM users").fetchone()[0])


def _sqlite_fill(url: str, tables: list[tuple[str, tuple[str, ...], Any]]) -> None:
    import itertools
    import sqlite3

    conn = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-200000")
        conn.execute("BEGIN")
        for table, columns, rows in tables:
            statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            while batch := list(itertools.islice(rows, _BATCH)):
                conn.executemany(statement, batch)
        conn.execute("COMMIT")
        # What a server's own checkpoints do as rows arrive one by one: without it the WAL holds the whole
        # fill (hundreds of MB), and every read of the server looks its pages up in the WAL index first.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("ANALYZE")  # as the PostgreSQL fill does
    finally:
        conn.close()


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _pg_max_user_id(url: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(url))
    try:
        return int(await conn.fetchval("SELECT coalesce(max(user_id), 0) FROM users"))
    finally:
        await conn.close()


async def _pg_fill(url: str, tables: list[tuple[str, tuple[str, ...], Any]]) -> None:
    import itertools

    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(url))
    try:
        async with conn.transaction():
            for table, columns, rows in tables:
                while batch := list(itertools.islice(rows, _BATCH)):
                    await conn.copy_records_to_table(table, records=batch, columns=list(columns))
            # The next user made through the service gets the next id.
            await conn.execute("SELECT setval(pg_get_serial_sequence('users', 'user_id'), (SELECT max(user_id) FROM users))")
        await conn.execute("ANALYZE users; ANALYZE api_keys; ANALYZE sessions; ANALYZE audit_events")  # what autovacuum would do soon
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="a PostgreSQL database to fill (default: a fresh SQLite file)")
    parser.add_argument("--data-dir", help="the data directory (default: a new temporary one)")
    args = parser.parse_args()
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="keygate-scale-"))
    settings = Settings(data_dir=data_dir, database_url=args.database_url or "",
                        master_key=os.environ.get("KEYGATE_MASTER_KEY") or base64.b64encode(secrets.token_bytes(32)).decode())
    filled = fill(settings, args.users, args.keys, args.sessions)
    print(f"filled {filled.users} users, {filled.keys} keys, {filled.sessions} sessions in {filled.seconds:.1f} s")
    print(f"data dir {data_dir}; database {settings.resolved_database_url}")
    print(f"KEYGATE_MASTER_KEY={settings.master_key}")
    print(f"admin {filled.admin_username} password {filled.password}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
