"""The console's search of sessions by username reads them in index order (migration 0014).

A user with many live sessions (a bot that signs in for every call) must not make each page of a
username search sort all of them: on SQLite the plan has no temporary B-tree, and the pages are the
sessions in (name, owner, issue time, token hash) order, each once, ties in the issue time included.
"""

from __future__ import annotations

import secrets
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import event, insert

from keygate.domain.paging import parse_search
from keygate.domain.sessions import Session, SessionKind, hash_token, new_token
from keygate.store.database import create_engine, migrate
from keygate.store.repositories import SessionRepository
from keygate.store.tables import users


async def test_a_username_search_pages_sessions_in_index_order(empty_database_url: str, tmp_path: Path) -> None:
    engine = create_engine(empty_database_url)
    try:
        await migrate(engine)
        now = datetime.now(timezone.utc).replace(microsecond=0)
        async with engine.begin() as conn:
            await conn.execute(insert(users), [
                {"user_id": i, "account_id": i, "username": name, "password_hash": "x", "is_admin": False, "locked": False,
                 "created_at": now}
                for i, name in ((1, "bob"), (2, "Bobby"), (3, "carol"))])
        repo = SessionRepository(engine)
        made = [Session(hash_token(new_token(now.timestamp())), 1 + i % 3, SessionKind.KEY, frozenset(), "k", None,
                        now + timedelta(seconds=i // 40), now, now + timedelta(hours=1), 1) for i in range(240)]
        await repo.insert_many(made)
        statements: list[tuple[str, object]] = []

        def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            if "FROM sessions JOIN users" in statement:
                statements.append((statement, parameters))

        event.listen(engine.sync_engine, "before_cursor_execute", seen)
        search = parse_search("bo")
        pages = [await repo.page(search, now, now - timedelta(minutes=30), offset, 50) for offset in range(0, 200, 50)]
        got = [s.token_hash for page in pages for s in page]
        names = {1: "bob", 2: "bobby"}
        expected = sorted((s for s in made if s.user_id in names),
                          key=lambda s: (names[s.user_id], s.user_id, s.created_at, s.token_hash))
        assert got == [s.token_hash for s in expected]  # 160 sessions of bob and Bobby, each once, in order
        if engine.dialect.name == "sqlite":
            statement, parameters = statements[0]
            db = sqlite3.connect(engine.url.database or "")
            plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement, parameters))  # type: ignore[arg-type]
            db.close()
            assert "TEMP B-TREE" not in plan and "ix_sessions_user_created" in plan, plan
        _ = secrets
    finally:
        await engine.dispose()
