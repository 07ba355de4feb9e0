"""The listing use cases page in the database: every query that reads users, keys or sessions for a
page carries a LIMIT (none loads a whole table), the pages hold the right rows, and only an
administrator (or the operator) sees every user's rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select

from keygate.domain.errors import Forbidden, InvalidRequest, NotFound
from keygate.domain.iprules import IpAllowlist
from keygate.domain.keys import ApiKey, new_api_key, new_nonce, new_secret
from keygate.domain.permissions import ALL_PERMISSIONS
from keygate.domain.replay import ReplayMode
from keygate.domain.sessions import Session, SessionKind, hash_token, new_token
from keygate.service import Keygate
from keygate.service.clock import utcnow
from keygate.service.keys import secret_context
from keygate.service.principal import OPERATOR, Principal
from keygate.store.repositories import KeyRepository, SessionRepository
from keygate.store.tables import api_keys, users
from listing_support import Seeded, seed
from support import unique_name

COUNT = 120


@pytest.fixture(scope="module")
async def seeded(kg: Keygate) -> Seeded:
    return await seed(kg, COUNT)


class Statements:
    def __init__(self, kg: Keygate) -> None:
        self.seen: list[str] = []
        self._engine = kg.engine.sync_engine

    def __enter__(self) -> Statements:
        event.listen(self._engine, "after_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self._engine, "after_cursor_execute", self._record)

    def _record(self, conn, cursor, statement: str, *args: object) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(" ".join(statement.split()))

    def listing_reads(self) -> list[str]:
        return [s for s in self.seen if s.upper().startswith("SELECT")
                and any(f"FROM {t}" in s for t in ("users", "api_keys", "sessions"))]


async def test_every_listing_query_is_limited(kg: Keygate, seeded: Seeded) -> None:
    user_id = seeded.user_ids[5]
    with Statements(kg) as statements:
        pages = [
            await kg.users.page(OPERATOR),
            await kg.users.page(OPERATOR, seeded.tag, page=2),
            await kg.keys.page(OPERATOR),
            await kg.keys.page(OPERATOR, seeded.tag, page=3),
            await kg.keys.page(OPERATOR, seeded.keys[user_id][:8]),
            await kg.sessions.page(OPERATOR),
            await kg.sessions.page(OPERATOR, seeded.tag, page=2),
        ]
        names = await kg.users.names(OPERATOR, [user_id, seeded.user_ids[6], 2**40])
    reads = statements.listing_reads()
    assert reads, statements.seen
    for statement in reads:
        assert " LIMIT " in statement or " IN (" in statement, statement
    assert [len(p.items) for p in pages[:2]] == [50, 50] and pages[0].has_next and pages[1].has_next
    assert [u.username for u in pages[1].items] == [seeded.name(i) for i in range(50, 100)]
    assert [k.api_key for k in pages[3].items] == [seeded.keys[i] for i in seeded.user_ids[100:]]
    assert not pages[3].has_next and pages[3].page == 3 and pages[3].has_previous
    assert seeded.keys[user_id] in [k.api_key for k in pages[4].items]
    assert [s.token_hash for s in pages[6].items] == [seeded.sessions[i] for i in seeded.user_ids[50:100]]
    assert names == {user_id: seeded.name(5), seeded.user_ids[6]: seeded.name(6)}


async def test_only_an_administrator_pages_every_users_rows(kg: Keygate, seeded: Seeded) -> None:
    own_id, other_id = seeded.user_ids[0], seeded.user_ids[1]
    person = Principal(await kg.users.require(own_id), ALL_PERMISSIONS, SessionKind.PASSWORD)
    for call in (kg.users.page(person), kg.keys.page(person), kg.sessions.page(person), kg.users.names(person, [own_id])):
        with pytest.raises(Forbidden):
            await call
    assert [k.api_key for k in (await kg.keys.page(person, user_id=own_id)).items] == [seeded.keys[own_id]]
    with pytest.raises(NotFound):
        await kg.keys.page(person, user_id=other_id)
    for page, size in ((0, 50), (1, 0), (1, 501), (True, 50)):
        with pytest.raises(InvalidRequest):
            await kg.users.page(OPERATOR, page=page, size=size)
    with pytest.raises(InvalidRequest):
        await kg.users.page(OPERATOR, "x" * 65)


async def test_a_hex_search_lists_key_prefix_matches_then_the_keys_of_matching_names(kg: Keygate, seeded: Seeded) -> None:
    await seed(kg, 12, with_sessions=False, tag=unique_name("a"))  # names that start with "a", as keys do
    async with kg.engine.connect() as conn:
        rows = (await conn.execute(select(api_keys.c.api_key, users.c.username, api_keys.c.created_at)
                                   .join(users, users.c.user_id == api_keys.c.user_id))).all()
    by_key = sorted(r[0] for r in rows if r[0].startswith("a"))
    by_name = [r[0] for r in sorted((r for r in rows if r[1].lower().startswith("a") and not r[0].startswith("a")),
                                    key=lambda r: (r[1].lower(), r[2]))]
    assert by_key and len(by_name) >= 6
    listed: list[str] = []
    for number in range(1, 1000):  # 7 a page, so pages start inside either part, and one spans both
        found = await kg.keys.page(OPERATOR, "A", page=number, size=7)
        listed += [k.api_key for k in found.items]
        if not found.has_next:
            break
    assert listed == by_key + by_name


async def test_a_number_lists_that_users_keys_then_the_keys_that_start_with_its_digits(kg: Keygate, seeded: Seeded) -> None:
    """One API key in forty starts with eight decimal digits: searching for it must find it, though a
    short number is a user id too."""
    owner, holder = seeded.user_ids[7], seeded.user_ids[8]
    made = {}
    for digits in (str(owner), "98765432"):
        api_key = digits + new_api_key()[len(digits):]
        await KeyRepository(kg.engine).insert(ApiKey(
            api_key=api_key, user_id=holder, label="digits", permissions=frozenset(), ip_allowlist=IpAllowlist(),
            sealed_secret=kg.box.seal(new_secret(), secret_context(api_key)), nonce=new_nonce(), created_at=utcnow(),
            updated_at=utcnow(), replay_mode=ReplayMode.COMPATIBLE))
        made[digits] = api_key
    by_owner = [k.api_key for k in (await kg.keys.page(OPERATOR, str(owner), size=500)).items]
    assert by_owner[0] == seeded.keys[owner] and made[str(owner)] in by_owner[1:]
    assert made["98765432"] in [k.api_key for k in (await kg.keys.page(OPERATOR, "98765432")).items]
    assert made["98765432"] in [k.api_key for k in (await kg.keys.page(OPERATOR, made["98765432"][:12])).items]


async def test_rows_made_at_the_same_instant_are_each_listed_once_across_pages(kg: Keygate) -> None:
    """Sessions (and keys) of one owner made in the same microsecond, as a bulk sign-in or an import
    makes them: paging through them lists every row exactly once. Ordered by owner and age alone, the
    order of such ties was the database's choice for each query; PostgreSQL's top-N sort chose
    differently for page 1 and page 2, so a row showed twice and another never (the console test's
    sessions page flaked so under a full run)."""
    owner = (await kg.users.create(OPERATOR, unique_name("ties"), "pw-" + new_nonce())).user_id
    at = utcnow()
    made = [Session(hash_token(new_token(at.timestamp())), owner, SessionKind.PASSWORD, ALL_PERMISSIONS, None,
                    "127.0.0.1", at, at, at + timedelta(hours=1)) for _ in range(130)]
    await SessionRepository(kg.engine).insert_many(made)
    for i in range(40):
        api_key = new_api_key()
        await KeyRepository(kg.engine).insert(ApiKey(
            api_key=api_key, user_id=owner, label="ties", permissions=frozenset(), ip_allowlist=IpAllowlist(),
            sealed_secret=kg.box.seal(new_secret(), secret_context(api_key)), nonce=new_nonce(), created_at=at,
            updated_at=at, replay_mode=ReplayMode.COMPATIBLE))

    async def every(listing, size: int, enough: int = 10**9, **search: object) -> list[str]:  # type: ignore[no-untyped-def]
        """The rows of every page, or of the first pages holding ``enough`` rows."""
        rows: list[str] = []
        for number in range(1, 100):
            page = await listing(OPERATOR, page=number, size=size, **search)
            rows += [getattr(r, "token_hash", None) or r.api_key for r in page.items]
            if not page.has_next or len(rows) >= enough:
                return rows
        raise AssertionError("the pages never end")

    for size in (7, 25, 50):
        sessions = await every(kg.sessions.page, size, user_id=owner)
        assert sorted(sessions) == sorted(s.token_hash for s in made), size
        # Every user's listing: the newest user's rows come first (by owner, the newest first).
        everyone = await every(kg.sessions.page, size, enough=140, search="")
        assert len(everyone) == len(set(everyone)) and set(sessions) <= set(everyone), size
        keys = await every(kg.keys.page, size, enough=45, search="")
        assert len(keys) == len(set(keys)), size
        assert len([k for k in await every(kg.keys.page, size, user_id=owner)]) == 40, size
