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
    real_flush = kg.flush

    async def never_answers() -> None:  # a client library waiting without a bound on a silent store
        await asyncio.Event().wait()

    async def flush() -> None:
        await real_flush()
        written.append("flushed")

    kg.state.close = never_answers  # type: ignore[method-assign]
    kg.flush = flush  # type: ignore[method-assign]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="keygate"):
        await asyncio.wait_for(kg.close(), 10)
    assert time.monotonic() - started < 5
    assert "shutdown: closing the shared state did not finish" in caplog.text, caplog.text
    assert written == ["flushed"], "what was waiting is written before the stuck step"
    assert kg.engine.pool.checkedout() == 0
