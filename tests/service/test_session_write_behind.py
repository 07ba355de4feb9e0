"""Key sessions are written behind (see service/sessions.py): usable at once, durable after a flush,
and never revived once ended, here or by a change made on another node."""

from __future__ import annotations

import asyncio
import time

import pytest
from svc_helpers import CLIENT_IP, count_rows, key_credentials

from keygate.config import Settings
from keygate.domain.errors import NotAuthorized
from keygate.domain.permissions import parse_permissions
from keygate.domain.sessions import hash_token, new_token
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from keygate.service.session_writer import RECHECK_SECONDS


def fresh(created):  # type: ignore[no-untyped-def]
    return key_credentials(created, nonce=str(time.time_ns() // 1000))


async def sessions_in_db(kg: Keygate, token: str) -> int:
    return await count_rows(kg, "sessions", "token_hash = :h", h=hash_token(token))


async def test_a_new_key_session_works_at_once_and_is_stored_by_the_next_flush(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    token = (await kg.auth.authenticate_key(fresh(created), CLIENT_IP)).token
    principal = await kg.auth.principal_for_token(token, CLIENT_IP)
    assert principal.user_id == user.user_id
    await kg.flush()
    assert await sessions_in_db(kg, token) == 1


async def test_the_writer_stores_new_sessions_without_a_flush(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    token = (await kg.auth.authenticate_key(fresh(created), CLIENT_IP)).token
    deadline = time.monotonic() + 5
    while await sessions_in_db(kg, token) == 0:
        assert time.monotonic() < deadline, "the session was not written within 5 s"
        await asyncio.sleep(0.05)


async def test_logout_before_the_write_is_final(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    token = (await kg.auth.authenticate_key(fresh(created), CLIENT_IP)).token
    principal = await kg.auth.principal_for_token(token, CLIENT_IP)
    await kg.auth.logout(principal, CLIENT_IP)
    await kg.flush()
    assert await sessions_in_db(kg, token) == 0
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, CLIENT_IP)


async def test_a_session_not_written_yet_has_its_keys_rights_as_they_are_now(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    token = (await kg.auth.authenticate_key(fresh(created), CLIENT_IP)).token
    await kg.keys.update(OPERATOR, user.user_id, created.key.api_key, permissions=parse_permissions([]))
    assert (await kg.auth.principal_for_token(token, CLIENT_IP)).permissions == frozenset()
    await kg.flush()
    assert (await kg.auth.principal_for_token(token, CLIENT_IP)).permissions == frozenset()


async def test_a_key_deleted_on_another_node_refuses_the_sessions_waiting_here(
    kg: Keygate, settings: Settings, make_user, make_key
) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    token = (await kg.auth.authenticate_key(fresh(created), CLIENT_IP)).token
    assert await kg.auth.principal_for_token(token, CLIENT_IP)
    other = Keygate(settings, serving=False)  # another node (or the CLI) on the same database
    try:
        await other.keys.delete(OPERATOR, user.user_id, created.key.api_key)
    finally:
        await other.close()
    assert kg.changes is not None
    await kg.changes.catch_up()  # what this node's listener does within 0.1 s (SQLite) or at once (PostgreSQL)
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, CLIENT_IP)
    await kg.flush()  # the session is written after its key was deleted: still refused
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, CLIENT_IP)


async def test_an_unknown_token_is_refused_after_one_more_look(kg: Keygate) -> None:
    started = time.monotonic()
    with pytest.raises(NotAuthorized):
        await kg.sessions.resolve(new_token(time.time()))
    assert time.monotonic() - started >= RECHECK_SECONDS * 0.9
    started = time.monotonic()
    with pytest.raises(NotAuthorized):
        await kg.sessions.resolve("not-a-token-keygate-issues")
    assert time.monotonic() - started < RECHECK_SECONDS


async def test_a_batch_of_every_size_class_is_written_whole(kg: Keygate, make_user, make_key) -> None:
    """341 = 256 + 64 + 16 + 4 + 1: the batch write uses every statement size, and loses or mixes up no row."""
    user = await make_user()
    created = await make_key(user.user_id)
    tokens = [(await kg.auth.authenticate_key(fresh(created), CLIENT_IP)).token for _ in range(341)]
    await kg.flush()
    assert await count_rows(kg, "sessions", "api_key = :k", k=created.key.api_key) == 341
    restarted = Keygate(kg.settings)
    try:
        await restarted.start()
        for token in tokens[::20] + tokens[-3:]:
            principal = await restarted.auth.principal_for_token(token, CLIENT_IP)
            assert principal.api_key == created.key.api_key
        events = await restarted.audit.query(OPERATOR, action="auth.key", api_key=created.key.api_key, limit=1000)
        assert len(events) == 341 and {e.client_ip for e in events} == {CLIENT_IP}
    finally:
        await restarted.close()


async def test_activity_is_written_back_for_every_session_in_one_flush(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    tokens = [(await kg.auth.authenticate_key(fresh(created), CLIENT_IP)).token for _ in range(3)]
    await kg.flush()
    await asyncio.sleep(1.1)  # past the one-second resolution of "last seen"
    for token in tokens[:2]:
        await kg.auth.principal_for_token(token, CLIENT_IP)
    await kg.flush()
    moved = await count_rows(kg, "sessions", "api_key = :k AND last_seen_at > created_at", k=created.key.api_key)
    assert moved == 2, "the two sessions used again (and only they) have a later last-seen time in the database"
