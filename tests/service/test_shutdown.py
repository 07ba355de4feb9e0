"""A stopping server finishes its shutdown even when one of its stores never answers.

Each step of ``Keygate.close`` is bounded (``CLOSE_STEP_SECONDS``): the step that overran is named in
the log, and the steps after it still run, so the database pool is closed and what was waiting is
written.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from keygate.config import Settings
from keygate.service import Keygate, container


async def test_a_store_that_never_answers_does_not_keep_the_shutdown_from_finishing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(container, "CLOSE_STEP_SECONDS", 0.5, raising=False)
    kg = Keygate(settings)
    await kg.start(bootstrap_admin=False)
    await kg.start_background()
    written: list[str] = []
    real_flush = kg.audit.flush  # the last of the writers

    async def never_answers() -> None:  # a client library waiting without a bound on a silent store
        await asyncio.Event().wait()

    async def flush() -> None:
        await real_flush()
        written.append("flushed")

    kg.state.close = never_answers  # type: ignore[method-assign]
    kg.audit.flush = flush  # type: ignore[method-assign]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="keygate"):
        await asyncio.wait_for(kg.close(), 10)
    assert time.monotonic() - started < 5
    assert "shutdown: closing the shared state did not finish" in caplog.text, caplog.text
    assert written == ["flushed"], "what was waiting is written before the stuck step"
    assert kg.engine.pool.checkedout() == 0


@pytest.fixture
def pg_behind_proxy(master_key: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Settings for a fresh PostgreSQL database reached through a TCP proxy the test can cut."""
    import uuid

    from support import _psql, need, pg_available
    from tcp_proxy import TcpProxy

    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"keygate_shutdown_{uuid.uuid4().hex[:10]}"
    _psql(f'CREATE DATABASE "{name}"')
    proxy = TcpProxy("127.0.0.1", 5432).start()
    try:
        yield proxy, Settings(data_dir=tmp_path_factory.mktemp("data"), master_key=master_key,
                              database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{name}",
                              database_connect_timeout_seconds=0.5)
    finally:
        proxy.close()
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_what_a_shutdown_cannot_write_is_counted_in_the_log(pg_behind_proxy, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """The database goes away just before the server stops: the audit events still waiting cannot be
    written, and nothing will retry them. The log says how many were lost, and of what (it said
    nothing: the step's failure was swallowed)."""
    proxy, settings = pg_behind_proxy
    kg = Keygate(settings)
    await kg.start(bootstrap_admin=False)
    proxy.cut()
    for i in range(3):
        kg.audit.record("auth.key", "failure", reason="signature mismatch", client_ip=f"192.0.2.{i}")
    with caplog.at_level(logging.WARNING, logger="keygate"):
        await asyncio.wait_for(kg.close(), 30)
    assert "shutdown: 3 audit events could not be written (DatabaseUnavailable); they are lost" in caplog.text, caplog.text


async def test_a_compatible_keys_highest_nonce_survives_a_failed_write(pg_behind_proxy) -> None:  # type: ignore[no-untyped-def]
    """The highest nonce a ``compatible`` key accepted is written with its last use; a switch to a
    strict mode refuses every nonce up to it. A write that fails (the database away for a moment)
    keeps it for the next one; it was dropped, so that after the switch a header set the key had
    accepted would be accepted again."""
    from keygate.domain.errors import ServiceUnavailable
    from keygate.domain.iprules import IpAllowlist
    from keygate.domain.replay import ReplayMode
    from keygate.service.principal import OPERATOR

    proxy, settings = pg_behind_proxy
    kg = Keygate(settings)
    await kg.start(bootstrap_admin=False)
    try:
        user = await kg.users.create(OPERATOR, "hn" + __import__("secrets").token_hex(4), "Long-enough-pass-1", "x@example.com")
        created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "c", replay_mode=ReplayMode.COMPATIBLE)
        api_key = created.key.api_key
        kg.keys.mark_used(api_key, "192.0.2.1")
        kg.keys.note_compatible_nonce(api_key, "5000")
        proxy.cut()
        with pytest.raises(ServiceUnavailable):
            await kg.keys.flush()
        proxy.restore()
        await kg.keys.flush()
        assert await kg.state.highest_nonce(api_key) == 5000
    finally:
        await kg.close()
