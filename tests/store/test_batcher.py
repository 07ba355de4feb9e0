"""The group commit (store/batcher.py): claims of requests under way together are decided in one
batch, even when a batch is decided without waiting (SQLite's direct connection answers at once);
every caller gets its own result; a failed batch fails all its callers."""

from __future__ import annotations

import asyncio

import pytest

from keygate.store.batcher import Batcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def decide(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))  # no await: as the direct SQLite path, which never yields
        return [i * 10 for i in items]


async def test_requests_under_way_together_share_one_batch() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.decide)

    async def request(i: int) -> int:
        for _ in range(i % 3):  # each request reaches its claim after a few steps of its own
            await asyncio.sleep(0)
        return await batcher.submit(i)

    results = await asyncio.gather(*(request(i) for i in range(16)))
    assert results == [i * 10 for i in range(16)]
    assert len(recorder.batches) == 1, recorder.batches
    assert sorted(recorder.batches[0]) == list(range(16))


async def test_a_lone_claim_is_decided_at_once_and_a_failed_batch_fails_each_caller() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.decide)
    assert await asyncio.wait_for(batcher.submit(7), 1) == 70

    async def broken(items: list[int]) -> list[int]:
        raise RuntimeError("the database is away")

    failing: Batcher[int, int] = Batcher(broken)
    outcomes = await asyncio.gather(*(failing.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)


async def test_a_batch_holds_at_most_max_batch_claims() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.decide, max_batch=4)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(10))) == [i * 10 for i in range(10)]
    assert [len(b) for b in recorder.batches] == [4, 4, 2]


pytestmark = pytest.mark.asyncio
